//! The destination: the [`EntitySink`] trait and its embedded backend, [`SqliteDestination`]
//! (`entities.db` beside the event store), keyed by (source connection, entity id) and
//! holding each entity's hash, content and timestamps. On a PostgreSQL store the destination
//! is `syncjobs_store_postgres::PgDestination` instead (that crate depends on this one for the
//! trait); both pass the suite in `pipeline::contract`.
//!
//! All SQLite work runs off the async threads. Writes go to one writer thread that commits
//! whatever requests are queued together in one transaction (group commit): under load the
//! batches grow and the fsyncs are shared; when idle a lone request commits at once, so a
//! worker never waits for a batch to fill and cancel latency stays one commit. Each request
//! runs in its own savepoint, so one request's error fails only that request. Stats read on
//! their own connection (WAL lets readers run beside the writer).
//!
//! Per job it keeps what that job's writes did (inserted, updated, kept, deleted, failed),
//! updated in the transaction of the writes themselves: when a job's run dies without
//! reporting (a crash, a worker the watchdog gives up on), these are the counts of what it
//! durably wrote, where its last progress report may be some rows behind.

use super::entity::EntityRecord;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use syncjobs_domain::EntityCounts;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The file the embedded destination keeps in its directory.
pub const ENTITIES_FILE: &str = "entities.db";
/// Most entities one writer transaction takes from the queue before it commits.
const MAX_TXN_ENTITIES: usize = 1024;
/// Queued writer commands before callers wait (back-pressure on the pool).
const WRITER_QUEUE: usize = 256;

/// What a write did to one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAction {
    /// The id was new for this source connection.
    Inserted,
    /// The id was known with another hash; content and hash were replaced.
    Updated,
    /// The id was known with the same hash; nothing was written.
    Kept,
}

/// Per-type entity stats of one source connection, in Airweave's `entities` shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityStats {
    pub total_entities: u64,
    pub by_type: BTreeMap<String, TypeStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStats {
    pub count: u64,
    /// When an entity of this type was last inserted or updated.
    pub last_updated: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("cannot open entity store {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// A database server's destination (PostgreSQL) would not open; `url` has its
    /// credentials masked.
    #[error("cannot open entity store {url}: {message}")]
    Connect { url: String, message: String },
    #[error("entity store error: {0}")]
    Storage(String),
    #[error("entity store is closed")]
    Closed,
}

impl From<rusqlite::Error> for DestinationError {
    fn from(e: rusqlite::Error) -> Self {
        DestinationError::Storage(e.to_string())
    }
}

/// Where a run keeps what it wrote.
#[async_trait]
pub trait EntitySink: Send + Sync + 'static {
    /// Resolves each record against what is stored for (source connection, entity id) and
    /// writes inserts and updates atomically, adding what it did, plus `failed` (entities of
    /// the batch that failed processing and were not written), to `job_id`'s counts in the
    /// same transaction: on `Err` nothing of this call was written or counted. Returns one
    /// action per record, in order.
    async fn write(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        records: Vec<EntityRecord>,
        failed: u64,
    ) -> Result<Vec<WriteAction>, DestinationError>;

    /// Deletes the source connection's entities whose ids are not in `seen` (the end of a
    /// completed run), counted as `job_id`'s deletes; returns how many were deleted.
    async fn delete_unseen(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
    ) -> Result<u64, DestinationError>;

    /// What `job_id`'s writes durably did (`skipped` is never known here: it is decided
    /// before the destination). All zero for a job that wrote nothing.
    async fn counts_for_job(&self, job_id: Uuid) -> Result<EntityCounts, DestinationError>;

    /// Entity counts per type for `GET /source-connections/{id}`.
    async fn stats(&self, source_connection_id: Uuid) -> Result<EntityStats, DestinationError>;

    /// Deletes every entity of a source connection (the delete-connection path; cancel never
    /// deletes). Returns how many were deleted.
    async fn purge(&self, source_connection_id: Uuid) -> Result<u64, DestinationError>;
}

type Reply<T> = oneshot::Sender<Result<T, DestinationError>>;

enum WriterCommand {
    Write(WriteRequest),
    DeleteUnseen {
        source_connection_id: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
        reply: Reply<u64>,
    },
    Purge {
        source_connection_id: Uuid,
        reply: Reply<u64>,
    },
}

/// The embedded destination: one SQLite file in WAL mode, one writer thread, one reader.
pub struct SqliteDestination {
    path: PathBuf,
    writer: mpsc::Sender<WriterCommand>,
    reader: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDestination")
            .field("path", &self.path)
            .finish()
    }
}

/// A rowid table with a unique key rather than WITHOUT ROWID: rows carry the content (about
/// 700 bytes for a timed entity), past the size where SQLite advises WITHOUT ROWID.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entities (
    id INTEGER PRIMARY KEY,
    source_connection_id TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    hash TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (source_connection_id, entity_id)
);
CREATE TABLE IF NOT EXISTS job_counts (
    job_id TEXT PRIMARY KEY,
    inserted INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    kept INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
";

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    // FULL: a committed batch is on disk before its counts are reported, so a crash never
    // leaves the job's counts ahead of the destination.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteDestination {
    /// Opens (creating if needed) `dir/entities.db` and starts its writer thread. Blocking:
    /// call it at startup or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Arc<SqliteDestination>, DestinationError> {
        let path = dir.join(ENTITIES_FILE);
        let open_err = |message: String| DestinationError::Open {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let writer_conn = open_connection(&path).map_err(|e| open_err(e.to_string()))?;
        writer_conn
            .execute_batch(SCHEMA)
            .map_err(|e| open_err(e.to_string()))?;
        let reader = open_connection(&path).map_err(|e| open_err(e.to_string()))?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("entities-writer".into())
            .spawn(move || writer_loop(writer_conn, rx))
            .map_err(|e| open_err(format!("cannot start writer thread: {e}")))?;
        Ok(Arc::new(SqliteDestination {
            path,
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> WriterCommand,
    ) -> Result<T, DestinationError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(make(reply))
            .await
            .map_err(|_| DestinationError::Closed)?;
        answer.await.map_err(|_| DestinationError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DestinationError> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn).map_err(DestinationError::from)
        })
        .await
        .map_err(|e| DestinationError::Storage(format!("reader task failed: {e}")))?
    }
}

#[async_trait]
impl EntitySink for SqliteDestination {
    async fn write(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        records: Vec<EntityRecord>,
        failed: u64,
    ) -> Result<Vec<WriteAction>, DestinationError> {
        if records.is_empty() && failed == 0 {
            return Ok(Vec::new());
        }
        self.ask(|reply| {
            WriterCommand::Write(WriteRequest {
                source_connection_id,
                job_id,
                records,
                failed,
                reply,
            })
        })
        .await
    }

    async fn delete_unseen(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
    ) -> Result<u64, DestinationError> {
        self.ask(|reply| WriterCommand::DeleteUnseen {
            source_connection_id,
            job_id,
            seen,
            reply,
        })
        .await
    }

    async fn counts_for_job(&self, job_id: Uuid) -> Result<EntityCounts, DestinationError> {
        let job = job_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT inserted, updated, kept, deleted, failed FROM job_counts WHERE job_id = ?1",
            )?;
            let mut rows = stmt.query([&job])?;
            let Some(row) = rows.next()? else {
                return Ok(EntityCounts::default());
            };
            let n = |i: usize| row.get::<_, i64>(i).map(i64::unsigned_abs);
            Ok(EntityCounts {
                inserted: n(0)?,
                updated: n(1)?,
                kept: n(2)?,
                deleted: n(3)?,
                failed: n(4)?,
                skipped: 0,
            })
        })
        .await
    }

    async fn stats(&self, source_connection_id: Uuid) -> Result<EntityStats, DestinationError> {
        let scid = source_connection_id.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT entity_type, COUNT(*), MAX(updated_at) FROM entities
                 WHERE source_connection_id = ?1 GROUP BY entity_type",
            )?;
            let mut stats = EntityStats::default();
            let rows = stmt.query_map([&scid], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                ))
            })?;
            for row in rows {
                let (entity_type, count, last) = row?;
                let count = count.unsigned_abs();
                stats.total_entities += count;
                stats.by_type.insert(
                    entity_type,
                    TypeStats {
                        count,
                        last_updated: last.and_then(DateTime::from_timestamp_micros),
                    },
                );
            }
            Ok(stats)
        })
        .await
    }

    async fn purge(&self, source_connection_id: Uuid) -> Result<u64, DestinationError> {
        self.ask(|reply| WriterCommand::Purge {
            source_connection_id,
            reply,
        })
        .await
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriterCommand>) {
    let mut pending: Option<WriterCommand> = None;
    loop {
        let command = match pending.take() {
            Some(command) => command,
            None => match rx.blocking_recv() {
                Some(command) => command,
                None => break,
            },
        };
        match command {
            WriterCommand::Write(request) => {
                let mut total = request.records.len();
                let mut group = vec![request];
                // Take what is already queued, never wait for more: a lone write commits now.
                while total < MAX_TXN_ENTITIES {
                    match rx.try_recv() {
                        Ok(WriterCommand::Write(request)) => {
                            total += request.records.len();
                            group.push(request);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut conn, group);
            }
            WriterCommand::DeleteUnseen {
                source_connection_id,
                job_id,
                seen,
                reply,
            } => {
                let result = delete_unseen(&mut conn, source_connection_id, job_id, &seen);
                let _ = reply.send(result.map_err(DestinationError::from));
            }
            WriterCommand::Purge {
                source_connection_id,
                reply,
            } => {
                let result = conn
                    .execute(
                        "DELETE FROM entities WHERE source_connection_id = ?1",
                        [source_connection_id.to_string()],
                    )
                    .map(|n| n as u64);
                let _ = reply.send(result.map_err(DestinationError::from));
            }
        }
    }
    tracing::debug!("entity store writer stopped");
}

/// One `write` call, queued for the writer thread.
struct WriteRequest {
    source_connection_id: Uuid,
    job_id: Uuid,
    records: Vec<EntityRecord>,
    failed: u64,
    reply: Reply<Vec<WriteAction>>,
}

type WriteResult = Result<Vec<WriteAction>, DestinationError>;

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn commit_group(conn: &mut Connection, group: Vec<WriteRequest>) {
    let now = now_micros();
    let mut outcomes: Vec<(Reply<Vec<WriteAction>>, WriteResult)> = Vec::with_capacity(group.len());
    let committed = (|| -> rusqlite::Result<()> {
        let mut tx = conn.transaction()?;
        for request in group {
            let result = (|| -> rusqlite::Result<Vec<WriteAction>> {
                let sp = tx.savepoint()?;
                let scid = request.source_connection_id.to_string();
                let actions = apply_records(&sp, &scid, &request.records, now)?;
                count_for_job(&sp, request.job_id, &actions, request.failed)?;
                sp.commit()?;
                Ok(actions)
            })();
            outcomes.push((request.reply, result.map_err(DestinationError::from)));
        }
        tx.commit()
    })();
    match committed {
        Ok(()) => {
            for (reply, result) in outcomes {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            // The transaction rolled back: nothing of the group was written, whatever the
            // savepoints said.
            let error = DestinationError::from(e);
            tracing::warn!(%error, "entity store commit failed");
            for (reply, _) in outcomes {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn apply_records(
    conn: &Connection,
    scid: &str,
    records: &[EntityRecord],
    now: i64,
) -> rusqlite::Result<Vec<WriteAction>> {
    // Insert first and look the stored hash up only when the id exists: a new entity (every
    // entity of a first sync) then costs one index search instead of two.
    let mut insert = conn.prepare_cached(
        "INSERT INTO entities
           (source_connection_id, entity_id, entity_type, hash, content, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (source_connection_id, entity_id) DO NOTHING",
    )?;
    let mut select = conn.prepare_cached(
        "SELECT hash FROM entities WHERE source_connection_id = ?1 AND entity_id = ?2",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE entities SET entity_type = ?3, hash = ?4, content = ?5, updated_at = ?6
         WHERE source_connection_id = ?1 AND entity_id = ?2",
    )?;
    let mut actions = Vec::with_capacity(records.len());
    for r in records {
        let inserted = insert.execute(params![
            scid,
            r.entity_id,
            r.entity_type,
            r.hash,
            r.content,
            now
        ])?;
        if inserted == 1 {
            actions.push(WriteAction::Inserted);
            continue;
        }
        let stored: String = select.query_row(params![scid, r.entity_id], |row| row.get(0))?;
        let action = if stored == r.hash {
            WriteAction::Kept
        } else {
            update.execute(params![
                scid,
                r.entity_id,
                r.entity_type,
                r.hash,
                r.content,
                now
            ])?;
            WriteAction::Updated
        };
        actions.push(action);
    }
    Ok(actions)
}

/// Adds one write's actions (and its failed entities) to the job's counts; called inside
/// the write's savepoint, so the counts commit or roll back with the rows.
fn count_for_job(
    conn: &Connection,
    job_id: Uuid,
    actions: &[WriteAction],
    failed: u64,
) -> rusqlite::Result<()> {
    let mut counts = EntityCounts {
        failed,
        ..EntityCounts::default()
    };
    for action in actions {
        match action {
            WriteAction::Inserted => counts.inserted += 1,
            WriteAction::Updated => counts.updated += 1,
            WriteAction::Kept => counts.kept += 1,
        }
    }
    add_job_counts(conn, job_id, &counts)
}

fn add_job_counts(conn: &Connection, job_id: Uuid, c: &EntityCounts) -> rusqlite::Result<()> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO job_counts (job_id, inserted, updated, kept, deleted, failed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (job_id) DO UPDATE SET
           inserted = inserted + excluded.inserted,
           updated = updated + excluded.updated,
           kept = kept + excluded.kept,
           deleted = deleted + excluded.deleted,
           failed = failed + excluded.failed",
    )?
    .execute(params![
        job_id.to_string(),
        n(c.inserted),
        n(c.updated),
        n(c.kept),
        n(c.deleted),
        n(c.failed)
    ])?;
    Ok(())
}

fn delete_unseen(
    conn: &mut Connection,
    scid: Uuid,
    job_id: Uuid,
    seen: &HashSet<String>,
) -> rusqlite::Result<u64> {
    let scid = scid.to_string();
    let tx = conn.transaction()?;
    let mut deleted = 0u64;
    {
        let stored: Vec<String> = {
            let mut stmt = tx
                .prepare_cached("SELECT entity_id FROM entities WHERE source_connection_id = ?1")?;
            let rows = stmt.query_map([&scid], |row| row.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut delete = tx.prepare_cached(
            "DELETE FROM entities WHERE source_connection_id = ?1 AND entity_id = ?2",
        )?;
        for id in stored.iter().filter(|id| !seen.contains(id.as_str())) {
            deleted += delete.execute(params![scid, id])? as u64;
        }
    }
    add_job_counts(
        &tx,
        job_id,
        &EntityCounts {
            deleted,
            ..EntityCounts::default()
        },
    )?;
    tx.commit()?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The behaviour (writes, deletes, counts, reopen, failures) is the contract suite's
    // (`contract.rs`), run on SQLite in `pipeline/tests.rs`; here what only a file has.

    #[test]
    fn open_reports_an_unusable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = SqliteDestination::open(&file).unwrap_err();
        assert!(matches!(err, DestinationError::Open { .. }), "{err:?}");
    }
}
