//! An in-memory [`EntitySink`] for tests: no threads, so it runs on tokio's paused clock
//! without the clock racing ahead while a real write is on another thread, plus the faults
//! tests need (a write delay standing for processing time, failure after N writes).

use super::destination::{DestinationError, EntitySink, EntityStats, TypeStats, WriteAction};
use super::entity::EntityRecord;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use syncjobs_domain::EntityCounts;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Row {
    entity_type: String,
    hash: String,
    updated_at: DateTime<Utc>,
}

/// The rows and each job's counts, under one lock so that they change together.
#[derive(Debug, Default)]
struct Tables {
    rows: BTreeMap<(Uuid, String), Row>,
    jobs: HashMap<Uuid, EntityCounts>,
}

/// A destination held in memory.
#[derive(Debug, Default)]
pub struct MemoryDestination {
    tables: Mutex<Tables>,
    write_delay: Duration,
    fail_after_writes: Option<usize>,
    writes: AtomicUsize,
}

impl MemoryDestination {
    pub fn new() -> Arc<MemoryDestination> {
        Arc::new(MemoryDestination::default())
    }

    /// Every write call first sleeps `delay` (tokio time), standing for processing time.
    pub fn with_write_delay(delay: Duration) -> Arc<MemoryDestination> {
        Arc::new(MemoryDestination {
            write_delay: delay,
            ..MemoryDestination::default()
        })
    }

    /// The first `n` write calls succeed; every later one fails and writes nothing.
    pub fn failing_after(n: usize, delay: Duration) -> Arc<MemoryDestination> {
        Arc::new(MemoryDestination {
            write_delay: delay,
            fail_after_writes: Some(n),
            ..MemoryDestination::default()
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many entities a source connection has.
    pub fn count(&self, source_connection_id: Uuid) -> u64 {
        self.tables()
            .rows
            .keys()
            .filter(|(scid, _)| *scid == source_connection_id)
            .count() as u64
    }
}

#[async_trait]
impl EntitySink for MemoryDestination {
    async fn write(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        records: Vec<EntityRecord>,
        failed: u64,
    ) -> Result<Vec<WriteAction>, DestinationError> {
        if !self.write_delay.is_zero() {
            tokio::time::sleep(self.write_delay).await;
        }
        let call = self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_after_writes.is_some_and(|n| call >= n) {
            return Err(DestinationError::Storage(
                "disk I/O error (injected)".into(),
            ));
        }
        let now = Utc::now();
        let mut tables = self.tables();
        let Tables { rows, jobs } = &mut *tables;
        let counts = jobs.entry(job_id).or_default();
        counts.failed += failed;
        let mut actions = Vec::with_capacity(records.len());
        for r in records {
            let key = (source_connection_id, r.entity_id);
            let action = match rows.get(&key) {
                None => WriteAction::Inserted,
                Some(row) if row.hash == r.hash => WriteAction::Kept,
                Some(_) => WriteAction::Updated,
            };
            match action {
                WriteAction::Inserted => counts.inserted += 1,
                WriteAction::Updated => counts.updated += 1,
                WriteAction::Kept => counts.kept += 1,
            }
            if action != WriteAction::Kept {
                rows.insert(
                    key,
                    Row {
                        entity_type: r.entity_type,
                        hash: r.hash,
                        updated_at: now,
                    },
                );
            }
            actions.push(action);
        }
        Ok(actions)
    }

    async fn delete_unseen(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
    ) -> Result<u64, DestinationError> {
        let mut tables = self.tables();
        let before = tables.rows.len();
        tables
            .rows
            .retain(|(scid, id), _| *scid != source_connection_id || seen.contains(id));
        let deleted = (before - tables.rows.len()) as u64;
        tables.jobs.entry(job_id).or_default().deleted += deleted;
        Ok(deleted)
    }

    async fn counts_for_job(&self, job_id: Uuid) -> Result<EntityCounts, DestinationError> {
        Ok(self.tables().jobs.get(&job_id).copied().unwrap_or_default())
    }

    async fn stats(&self, source_connection_id: Uuid) -> Result<EntityStats, DestinationError> {
        let mut stats = EntityStats::default();
        for ((scid, _), row) in self.tables().rows.iter() {
            if *scid != source_connection_id {
                continue;
            }
            stats.total_entities += 1;
            let entry = stats
                .by_type
                .entry(row.entity_type.clone())
                .or_insert_with(TypeStats::default);
            entry.count += 1;
            entry.last_updated = entry.last_updated.max(Some(row.updated_at));
        }
        Ok(stats)
    }

    async fn purge(&self, source_connection_id: Uuid) -> Result<u64, DestinationError> {
        let rows = &mut self.tables().rows;
        let before = rows.len();
        rows.retain(|(scid, _), _| *scid != source_connection_id);
        Ok((before - rows.len()) as u64)
    }
}
