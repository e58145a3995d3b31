//! The baselines: plain rusqlite doing the same physical work as the service with nothing of
//! the service around it (no channels, no actors, no HTTP), on the same disk, with the same
//! journal mode (WAL) and sync setting (`synchronous=FULL`). All functions block: run them on
//! the blocking pool.

use crate::error::{BenchError, Result};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::{Duration, Instant};
use syncjobs_actors::pipeline::EntityRecord;
use syncjobs_domain::events::{NewEvent, CURRENT_SCHEMA_VERSION};
use uuid::Uuid;

/// The columns the embedded store writes, in its order.
const INSERT_EVENT: &str = "INSERT INTO events (
    stream_id, version, event_id, event_type, schema_version, data, recorded_at,
    causation_id, correlation_id, caused_by
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Every column, in log order: what replaying the log has to read.
const SCAN_EVENTS: &str = "SELECT global_position, stream_id, version, event_id, event_type,
    schema_version, data, recorded_at, causation_id, correlation_id, caused_by
FROM events ORDER BY global_position";

/// The columns the embedded destination writes for a new entity.
const INSERT_ENTITY: &str = "INSERT INTO entities
    (source_connection_id, entity_id, entity_type, hash, content, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)";

/// Stops a timed loop that somehow never reaches its deadline.
const MAX_ROWS: u64 = 50_000_000;

fn open_durable(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BenchError::failed(format!(
            "{}: WAL refused ({mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// One event as the store lays it out in a row.
pub struct EventRow {
    event_id: String,
    event_type: &'static str,
    data: String,
    recorded_at: String,
    causation_id: Option<String>,
    correlation_id: Option<String>,
    caused_by: String,
}

impl EventRow {
    pub fn of(e: &NewEvent) -> Result<EventRow> {
        Ok(EventRow {
            event_id: e.event_id.to_string(),
            event_type: e.event.event_type(),
            data: e.event.to_json()?,
            recorded_at: syncjobs_domain::time::nanos(&e.recorded_at),
            causation_id: e.metadata.causation_id.map(|u| u.to_string()),
            correlation_id: e.metadata.correlation_id.map(|u| u.to_string()),
            caused_by: e.metadata.caused_by.clone(),
        })
    }
}

/// What a timed insert loop did.
#[derive(Debug, Clone, Copy)]
pub struct Inserted {
    pub rows: u64,
    pub elapsed: Duration,
}

/// Inserts events into the store's `events` table at `path` (created by the store, so the
/// table and its indexes are the real ones) for `run_for`: `batch` rows per transaction,
/// round-robin over `streams` streams, each row made like the store makes it (event built,
/// serialised, time formatted). `make` builds the n-th event of a stream.
///
/// As strong as the store's own writer: a batch's rows are built before its transaction
/// begins (the store's appenders build theirs on their own threads), and the WAL is
/// checkpointed by the store's own checkpointer, off the commit path.
pub fn insert_events(
    path: &Path,
    streams: usize,
    batch: usize,
    run_for: Duration,
    make: impl Fn(u64) -> NewEvent,
) -> Result<Inserted> {
    let mut conn = open_durable(path)?;
    let checkpointer = syncjobs_store_sqlite::wal_checkpoint::attach(&mut conn, path)
        .map_err(|e| BenchError::failed(e.to_string()))?;
    let names: Vec<String> = (0..streams).map(|s| format!("raw-{s}")).collect();
    let mut versions = vec![0u64; streams];
    let mut next = 0usize;
    let mut rows = 0u64;
    let mut pending: Vec<(usize, u64, EventRow)> = Vec::with_capacity(batch);
    let started = Instant::now();
    let deadline = started + run_for;
    while Instant::now() < deadline && rows < MAX_ROWS {
        pending.clear();
        for _ in 0..batch {
            versions[next] += 1;
            pending.push((next, versions[next], EventRow::of(&make(versions[next]))?));
            next = (next + 1) % streams;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(INSERT_EVENT)?;
            for (stream, version, row) in &pending {
                stmt.execute(params![
                    names[*stream],
                    *version as i64,
                    row.event_id,
                    row.event_type,
                    CURRENT_SCHEMA_VERSION,
                    row.data,
                    row.recorded_at,
                    row.causation_id,
                    row.correlation_id,
                    row.caused_by,
                ])?;
            }
        }
        tx.commit()?;
        rows += batch as u64;
    }
    let elapsed = started.elapsed();
    drop(conn);
    checkpointer.stop();
    Ok(Inserted { rows, elapsed })
}

/// What a scan read.
#[derive(Debug, Clone, Copy)]
pub struct Scanned {
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Reads every column of every event in log order, touching each value (no decoding).
pub fn scan_events(path: &Path) -> Result<Scanned> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let started = Instant::now();
    let mut stmt = conn.prepare(SCAN_EVENTS)?;
    let mut rows = stmt.query([])?;
    let (mut count, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.next()? {
        for i in 0..11 {
            bytes += match row.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) => t.len() as u64,
                rusqlite::types::ValueRef::Integer(_) => 8,
                _ => 0,
            };
        }
        count += 1;
    }
    Ok(Scanned {
        rows: count,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// The physical floor of a cancel: two durable commits one after the other (the request
/// recorded, then the confirmation), each one small row in its own transaction, in a fresh
/// WAL database. One [`FloorDb::pair`] is one sample, so a benchmark can alternate floor
/// samples with its own and have both see the same machine.
pub struct FloorDb {
    conn: Connection,
    stream: String,
    data: String,
}

impl FloorDb {
    pub fn open(path: &Path) -> Result<FloorDb> {
        let conn = open_durable(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, stream TEXT, data TEXT)",
        )?;
        Ok(FloorDb {
            conn,
            stream: Uuid::new_v4().to_string(),
            data: "x".repeat(200),
        })
    }

    /// Two commits, back to back; their total time.
    pub fn pair(&self) -> Result<Duration> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO floor (stream, data) VALUES (?1, ?2)")?;
        let t = Instant::now();
        stmt.execute(params![self.stream, self.data])?;
        stmt.execute(params![self.stream, self.data])?;
        Ok(t.elapsed())
    }
}

/// One entity row of the destination.
pub struct EntityRow {
    pub source_connection_id: String,
    pub record: EntityRecord,
}

/// Inserts `rows` into the destination's `entities` table at `path` (created by the
/// destination), `batch` rows per transaction. Returns the time it took.
pub fn insert_entities(path: &Path, rows: &[EntityRow], batch: usize) -> Result<Duration> {
    let mut conn = open_durable(path)?;
    let now = chrono::Utc::now().timestamp_micros();
    let started = Instant::now();
    for chunk in rows.chunks(batch.max(1)) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(INSERT_ENTITY)?;
            for row in chunk {
                let r = &row.record;
                stmt.execute(params![
                    row.source_connection_id,
                    r.entity_id,
                    r.entity_type,
                    r.hash,
                    r.content,
                    now
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}
