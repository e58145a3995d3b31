//! Fuzz target: the read-model snapshot file (`read_model.snapshot`) as [`snapshot::load`]
//! reads it at start-up.
//!
//! Properties: random bytes, truncated and bit-flipped snapshots are refused with an error,
//! never a panic; a damaged body behind a correct checksum (what the checksum cannot catch)
//! decodes or is refused, and what decodes saves and loads as itself; a length declared in
//! the MessagePack body cannot make the loader reserve more than the file could fill; every
//! valid model round-trips.

#[path = "../../tests/support/alloc_probe.rs"]
mod alloc_probe;
#[path = "../../tests/support/cases.rs"]
mod cases;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use std::path::Path;
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, CollectionEvent, EntityCounts, Event, Metadata, RecordedEvent,
    SourceConnectionEvent, SyncJobEvent,
};
use syncjobs_projections::{snapshot, ReadModel, SnapshotError};
use uuid::Uuid;

/// Magic, format, CRC-32: the snapshot's header (projections/src/snapshot.rs).
const HEADER_LEN: usize = 16;

/// One source connection's story in a generated model.
#[derive(Debug, Clone)]
struct Story {
    name: String,
    /// 0 pending, 1 running, 2 completed, 3 failed, 4 cancelling, 5 cancelled, 6 forced.
    job: u8,
    inserted: u64,
    deleted_connection: bool,
}

fn story() -> impl Strategy<Value = Story> {
    (
        prop::collection::vec(any::<char>(), 4..20).prop_map(String::from_iter),
        0u8..7,
        any::<u64>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(name, job, inserted, deleted_connection)| Story {
            name,
            job,
            inserted,
            deleted_connection,
        })
}

/// A read model folded from a history with organizations, a key, collections, source
/// connections and jobs in every state.
fn model() -> impl Strategy<Value = ReadModel> {
    (any::<u64>(), prop::collection::vec(story(), 0..5)).prop_map(|(seed, stories)| {
        let mut events: Vec<(String, Event)> = Vec::new();
        let id = |n: u64| Uuid::from_u64_pair(seed, n);
        let org = id(0);
        events.push((
            stream::ACCESS.into(),
            AccessEvent::OrganizationCreated {
                organization_id: org,
                name: "default".into(),
            }
            .into(),
        ));
        events.push((
            stream::ACCESS.into(),
            AccessEvent::ApiKeyCreated {
                key_id: id(1),
                organization_id: org,
                key_hash: format!("{seed:064x}"),
                prefix: "sjk_".into(),
                expires_at: None,
            }
            .into(),
        ));
        for (i, s) in stories.iter().enumerate() {
            let n = 10 * (i as u64 + 1);
            let (collection, sc, job) = (id(n), id(n + 1), id(n + 2));
            let counts = EntityCounts {
                inserted: s.inserted,
                ..Default::default()
            };
            events.push((
                stream::collection(collection),
                CollectionEvent::CollectionCreated {
                    collection_id: collection,
                    organization_id: org,
                    name: s.name.clone(),
                    readable_id: format!("c{i}"),
                }
                .into(),
            ));
            events.push((
                stream::source_connection(sc),
                SourceConnectionEvent::SourceConnectionCreated {
                    source_connection_id: sc,
                    organization_id: org,
                    collection_id: collection,
                    readable_collection_id: format!("c{i}"),
                    name: s.name.clone(),
                    description: Some(s.name.clone()),
                    short_name: "timed".into(),
                    config: serde_json::json!({"entity_count": 10, "duration_seconds": 0.5}),
                    auth_method: "direct".into(),
                    authenticated: true,
                }
                .into(),
            ));
            let mut job_events = vec![SyncJobEvent::JobCreated {
                job_id: job,
                source_connection_id: sc,
                organization_id: org,
                short_name: "timed".into(),
                config: serde_json::json!({"seed": i}),
            }];
            if s.job >= 1 {
                job_events.push(SyncJobEvent::JobStarted { worker: "w".into() });
            }
            match s.job {
                2 => job_events.push(SyncJobEvent::JobCompleted { counts }),
                3 => job_events.push(SyncJobEvent::JobFailed {
                    error: s.name.clone(),
                    error_category: None,
                    counts,
                    counts_reconciled: i % 2 == 0,
                }),
                4..=6 => job_events.push(SyncJobEvent::CancelRequested {
                    requested_by: "api".into(),
                    timeout_seconds: 3,
                }),
                _ => {}
            }
            match s.job {
                5 => job_events.push(SyncJobEvent::Cancelled {
                    counts,
                    note: None,
                    counts_reconciled: false,
                }),
                6 => job_events.push(SyncJobEvent::ForceCancelled {
                    error: "forced".into(),
                    timeout_seconds: 3,
                    requested_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                    counts,
                    counts_reconciled: true,
                }),
                _ => {}
            }
            events.extend(
                job_events
                    .into_iter()
                    .map(|e| (stream::job(job), Event::from(e))),
            );
            if s.deleted_connection {
                events.push((
                    stream::source_connection(sc),
                    SourceConnectionEvent::SourceConnectionDeleted {
                        source_connection_id: sc,
                    }
                    .into(),
                ));
            }
        }
        let mut model = ReadModel::new();
        for (i, (stream_id, event)) in events.into_iter().enumerate() {
            let position = i as u64 + 1;
            model.apply(&RecordedEvent {
                event_id: id(1_000_000 + position),
                stream_id,
                version: 1,
                global_position: position,
                recorded_at: Utc
                    .timestamp_opt(1_800_000_000 + position as i64, 7)
                    .unwrap(),
                schema_version: 2,
                metadata: Metadata::default(),
                event,
            });
        }
        model
    })
}

fn header_for(body: &[u8]) -> Vec<u8> {
    let mut b = b"SJREADMD".to_vec();
    b.extend_from_slice(&snapshot::SNAPSHOT_FORMAT.to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    b.extend_from_slice(body);
    b
}

/// Loads `bytes` as a snapshot file; returns the outcome and the largest allocation made.
fn load_bytes(path: &Path, bytes: &[u8]) -> (Result<Option<ReadModel>, SnapshotError>, usize) {
    std::fs::write(path, bytes).unwrap();
    alloc_probe::largest_allocation(|| snapshot::load(path))
}

/// Anything loaded from a file saves and loads again as the same model.
fn reloads_as_itself(path: &Path, model: &ReadModel) {
    let again = snapshot::encode(model).expect("a loaded model encodes");
    std::fs::write(path, &again).unwrap();
    let back = snapshot::load(path).expect("its own encoding loads");
    assert_eq!(back.as_ref(), Some(model));
}

proptest! {
    #![proptest_config(cases::cases(128))]

    #[test]
    fn every_model_round_trips(model in model()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        snapshot::save(&path, &model).unwrap();
        // The derived indexes are rebuilt on load, and may differ from the incrementally
        // kept ones by empty lists a deletion left behind; the rows must be identical.
        let mut expected = model;
        expected.rebuild_indexes();
        prop_assert_eq!(snapshot::load(&path).unwrap(), Some(expected));
    }

    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        // Half of the cases get past the magic and the format to reach the checksum.
        let bytes = if magic { header_for(&bytes)[..12].iter().chain(&bytes).copied().collect() } else { bytes };
        let (loaded, largest) = load_bytes(&path, &bytes);
        prop_assert!(loaded.is_err(), "random bytes loaded as a model");
        prop_assert!(largest <= alloc_probe::allowance(bytes.len()), "{} bytes", largest);
    }

    #[test]
    fn truncated_snapshots_are_refused(model in model(), cut in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        let bytes = snapshot::encode(&model).unwrap();
        let cut = cut.index(bytes.len());
        let (loaded, _) = load_bytes(&path, &bytes[..cut]);
        prop_assert!(loaded.is_err(), "a snapshot cut at {} of {} loaded", cut, bytes.len());
    }

    #[test]
    fn bit_flipped_snapshots_are_refused(
        model in model(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        let mut bytes = snapshot::encode(&model).unwrap();
        let original = bytes.clone();
        for (at, bit) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        let (loaded, _) = load_bytes(&path, &bytes);
        if bytes != original {
            prop_assert!(loaded.is_err(), "a damaged snapshot loaded");
        }
    }

    /// The checksum stops random damage; behind a correct one (a bug, a hand edit, a
    /// collision) the MessagePack decoder and the index rebuild must still hold.
    #[test]
    fn a_damaged_body_behind_a_valid_checksum_decodes_or_is_refused(
        model in model(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read_model.snapshot");
        let mut body = snapshot::encode(&model).unwrap()[HEADER_LEN..].to_vec();
        for (at, byte, how) in &edits {
            let i = at.index(body.len().max(1));
            match how {
                0 if !body.is_empty() => body[i] = *byte,
                1 => body.truncate(i),
                // A 32-bit length marker (str, bin, array, map) claiming 4 GiB.
                _ => {
                    let marker = [0xdb, 0xc6, 0xdd, 0xdf][usize::from(*byte % 4)];
                    let at = i.min(body.len());
                    body.splice(at..at, [marker, 0xff, 0xff, 0xff, 0xff]);
                }
            }
        }
        let bytes = header_for(&body);
        let (loaded, largest) = load_bytes(&path, &bytes);
        prop_assert!(largest <= alloc_probe::allowance(bytes.len()), "{} bytes for a {}-byte file", largest, bytes.len());
        if let Ok(Some(loaded)) = loaded {
            reloads_as_itself(&path, &loaded);
        }
    }
}

/// A length prefix is refused before anything is reserved for it: each 32-bit marker at
/// the top of the body and inside the model's first map, declaring 4 GiB in a file of 30 bytes.
#[test]
fn a_huge_declared_length_is_refused_without_reserving_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read_model.snapshot");
    for marker in [0xdb, 0xc6, 0xdd, 0xdf] {
        let huge = [marker, 0xff, 0xff, 0xff, 0xff];
        // the model is an array of 7 fields: position, then the organizations map, ...
        let top = huge.to_vec();
        let inside: Vec<u8> = [0x97, 0x00].iter().chain(&huge).copied().collect();
        let in_a_row: Vec<u8> = [0x97, 0x00, 0x81, 0xc4, 0x10]
            .iter()
            .chain(&[0u8; 16])
            .chain(&huge)
            .copied()
            .collect();
        for body in [top, inside, in_a_row] {
            let bytes = header_for(&body);
            let (loaded, largest) = load_bytes(&path, &bytes);
            assert!(
                matches!(loaded, Err(SnapshotError::Decode { .. })),
                "{body:x?}: {loaded:?}"
            );
            assert!(
                largest <= alloc_probe::allowance(bytes.len()),
                "{body:x?}: reserved {largest} bytes"
            );
        }
    }
}

/// The allocation check can fail: a reservation of a declared 4 GiB is seen (and never
/// touched, so it costs nothing here).
#[test]
fn the_allocation_probe_sees_a_huge_reservation() {
    let (v, largest) = alloc_probe::largest_allocation(|| Vec::<u8>::with_capacity(1 << 32));
    drop(v);
    assert!(largest > alloc_probe::allowance(30), "{largest}");
}
