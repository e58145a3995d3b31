//! The read model's database: SQLite (`read_model.db` beside the embedded event log, a file
//! of its own so that its writes never contend with the log's writer), or PostgreSQL tables
//! in the PostgreSQL store's database ([`pg`]), shared by every node.
//!
//! - [`fold`]: the one fold, which decides the rows each event changes, against a small
//!   trait of row operations each engine implements on its transaction.
//! - [`writer`]: the SQLite [`Writer`], which folds a batch of events and commits the rows
//!   with the position in one transaction (a crash never applies an event twice nor skips
//!   one); only live jobs stay in its memory.
//! - [`view`]: [`ReadView`], the indexed queries the API makes, on a pooled read-only
//!   connection, with bounded caches of final jobs and API keys (both engines).
//! - [`pg`]: the PostgreSQL engine: its schema, writer and queries.
//! - [`cache`]: the LRU cache the writer invalidates without racing the readers that fill it.
//!
//! SQLite runs in WAL with `synchronous=NORMAL`: a power loss may lose the last commits, never corrupt the
//! file, and the lost tail is folded again from the stored position (the log is the truth).
//! The WAL is checkpointed off the commit path by the store's checkpointer
//! (`syncjobs_store_sqlite::wal_checkpoint`), so no commit (and no read-your-writes wait behind
//! it) pays for copying pages back.

pub mod cache;
pub mod fold;
pub mod pg;
pub mod view;
pub mod writer;

pub use view::ReadView;
pub use writer::Writer;

use crate::model::Organization;
use cache::Cache;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use syncjobs_domain::JobState;
use uuid::Uuid;

/// The tables `schema.sql` (and `pg/schema.sql`) create. Tables of another version are
/// dropped and rebuilt from the log (bump this with every change of the tables or of the
/// row encodings, on either engine).
pub const SCHEMA_VERSION: i64 = 4;
/// The name of this projection's row in `projection`.
pub const PROJECTION_NAME: &str = "read_model";

const SCHEMA: &str = include_str!("schema.sql");
/// Tables in the order they are dropped on a rebuild.
const TABLES: [&str; 12] = [
    "projection",
    "organizations",
    "api_keys",
    "collections",
    "source_connections",
    "jobs",
    "purge_queue",
    "organization_counts",
    "webhook_subscriptions",
    "webhook_messages",
    "webhook_deliveries",
    "webhook_attempts",
];
/// Read connections kept open between reads (more are opened under load, then closed).
const IDLE_READERS: usize = 8;
/// Final jobs kept in memory for `GET` one job (immutable once final).
const JOB_CACHE: usize = 4096;
/// API keys kept in memory by hash (every request authenticates).
const KEY_CACHE: usize = 1024;
/// Source connections' organizations kept in memory by id: `GET` one job checks its
/// connection on every call, and a probe of SQLite per request took ~40% of its CPU (bench #2).
const CONNECTION_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read model database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("read model database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("read model row cannot be decoded: {0}")]
    Decode(String),
    #[error("read model: {0}")]
    Io(#[from] std::io::Error),
    #[error("read model WAL checkpointer: {0}")]
    Checkpointer(String),
    /// The blocking task that committed a batch did not finish (it panicked).
    #[error("the read model's commit task failed: {0}")]
    Task(String),
    #[error("read model database (PostgreSQL): {}", syncjobs_store_postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The database is away (no connection within the bound): answered 503.
    #[error("{0}")]
    Unavailable(String),
    #[error("read model database settings: {0}")]
    Config(String),
}

impl ReadError {
    /// The database cannot be reached now (a retry later may work).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ReadError::Unavailable(_) => true,
            ReadError::Postgres(e) => {
                use std::error::Error;
                // The connection broke, or the server is shutting down or starting
                // (SQLSTATE classes 08 and 57P).
                e.is_closed()
                    || e.source().is_some_and(|s| s.is::<std::io::Error>())
                    || e.code()
                        .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            _ => false,
        }
    }
}

/// The database: where the writer commits and the readers read, with the caches both
/// engines keep in front of it.
pub struct ReadDb {
    pub(crate) engine: Engine,
    pub(crate) jobs: Cache<Uuid, JobState>,
    pub(crate) keys: Cache<String, Option<(crate::model::ApiKey, bool)>>,
    /// Existing connections only (a miss asks SQLite): a connection appears by its creation,
    /// which no cached entry contradicts, and disappears by a delete, which invalidates this.
    pub(crate) connections: Cache<Uuid, Uuid>,
}

pub(crate) enum Engine {
    Sqlite(SqliteDb),
    Postgres(pg::PgDb),
}

/// The SQLite file and its idle read connections.
pub(crate) struct SqliteDb {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// A `read_model.db` file and its position, as found at start-up.
pub struct Opened {
    pub db: ReadDb,
    pub writer: Writer,
}

impl ReadDb {
    /// Opens (or creates) the read model at `path`: a file of another schema version, or one
    /// ahead of the log's `head` (another store's), is emptied so the model is rebuilt from
    /// the log. Loads the live jobs for the writer.
    pub fn open(path: &Path, head: u64) -> Result<Opened, ReadError> {
        match Self::try_open(path, head) {
            Err(ReadError::Open { source, .. }) if is_damage(&source) => {
                // Derived data: a damaged file costs a rebuild from the log, nothing more.
                tracing::warn!(
                    path = %path.display(),
                    error = %source,
                    "read model database unusable; rebuilding it from the log"
                );
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.as_os_str().to_owned();
                    file.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(file));
                }
                Self::try_open(path, head)
            }
            other => other,
        }
    }

    fn try_open(path: &Path, head: u64) -> Result<Opened, ReadError> {
        let open_err = |source| ReadError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        prepare_schema(&conn, head).map_err(open_err)?;
        let checkpointer = syncjobs_store_sqlite::wal_checkpoint::attach(&mut conn, path)
            .map_err(|e| ReadError::Checkpointer(e.to_string()))?;
        let writer = Writer::load(conn, checkpointer)?;
        let db = ReadDb::new(Engine::Sqlite(SqliteDb {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }));
        Ok(Opened { db, writer })
    }

    pub(crate) fn new(engine: Engine) -> ReadDb {
        ReadDb {
            engine,
            jobs: Cache::new(JOB_CACHE),
            keys: Cache::new(KEY_CACHE),
            connections: Cache::new(CONNECTION_CACHE),
        }
    }

    /// After a commit that changed what the caches may hold.
    pub(crate) fn invalidate(&self, jobs: bool, keys: bool) {
        if jobs {
            self.jobs.invalidate();
            self.connections.invalidate();
        }
        if keys {
            self.keys.invalidate();
        }
    }
}

impl SqliteDb {
    /// A read-only connection from the pool, back in it when the guard goes.
    pub(crate) fn reader(&self) -> Result<Reader<'_>, ReadError> {
        let conn = self.lock_idle().pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open_reader()?,
        };
        Ok(Reader {
            db: self,
            conn: Some(conn),
        })
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_reader(&self) -> Result<Connection, ReadError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| ReadError::Open {
            path: self.path.clone(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }
}

/// A pooled read connection (see [`SqliteDb::reader`]).
pub(crate) struct Reader<'a> {
    db: &'a SqliteDb,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present until dropped.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.db.lock_idle();
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// Not a database, or a damaged one.
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Creates the tables, or drops and recreates them when their version is not this build's
/// or they are ahead of the log.
fn prepare_schema(conn: &Connection, head: u64) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    let stored: Option<(i64, i64)> = conn
        .query_row(
            "SELECT schema_version, position FROM projection WHERE name = ?1",
            [PROJECTION_NAME],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let rebuild = match stored {
        None => false,
        Some((version, _)) if version != SCHEMA_VERSION => {
            tracing::warn!(
                found = version,
                expected = SCHEMA_VERSION,
                "read model of another schema version; rebuilding it from the log"
            );
            true
        }
        Some((_, position)) if position as u64 > head => {
            tracing::warn!(
                read_model_position = position,
                store_head = head,
                "read model is ahead of the store; rebuilding it from the log"
            );
            true
        }
        Some(_) => false,
    };
    if rebuild {
        drop_tables(conn)?;
        conn.execute_batch(SCHEMA)?;
    }
    conn.execute(
        "INSERT INTO projection (name, position, schema_version) VALUES (?1, 0, ?2)
         ON CONFLICT (name) DO NOTHING",
        rusqlite::params![PROJECTION_NAME, SCHEMA_VERSION],
    )?;
    Ok(())
}

fn drop_tables(conn: &Connection) -> rusqlite::Result<()> {
    for table in TABLES {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {table}"))?;
    }
    Ok(())
}

/// Empties the read model at `path` so the next start rebuilds it from the log
/// (`syncjobs rebuild-read-model`).
pub fn reset(path: &Path) -> Result<(), ReadError> {
    let conn = Connection::open(path).map_err(|source| ReadError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    drop_tables(&conn)?;
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

// ---- row codecs -------------------------------------------------------------------------

pub(crate) fn time(t: &DateTime<Utc>) -> String {
    syncjobs_domain::time::nanos(t)
}

pub(crate) fn parse_time(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    syncjobs_domain::time::parse(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(crate) fn encode_job(state: &JobState) -> Result<Vec<u8>, ReadError> {
    // `rmp_serde::to_vec`'s encoding (the same serializer), into a buffer that a job's
    // state fits: `to_vec` starts empty and regrew it four or five times per job row.
    let mut buf = Vec::with_capacity(256);
    rmp_serde::encode::write(&mut buf, state).map_err(|e| ReadError::Decode(e.to_string()))?;
    Ok(buf)
}

pub(crate) fn decode_job(bytes: &[u8]) -> Result<JobState, ReadError> {
    rmp_serde::from_slice(bytes).map_err(|e| ReadError::Decode(e.to_string()))
}

pub(crate) fn organization_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Organization> {
    Ok(Organization {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: parse_time(&r.get::<_, String>(2)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncjobs_domain::{EntityCounts, SyncJobEvent};

    /// A stored job state's bytes are what `rmp_serde::to_vec` wrote before: rows written by
    /// older builds and by this one read alike.
    #[test]
    fn encoded_job_state_is_rmp_serdes_to_vec_and_reads_back() {
        let at = DateTime::<Utc>::from_timestamp_nanos(1_764_000_000_123_456_789);
        let mut state = JobState::created(
            SyncJobEvent::JobCreated {
                job_id: Uuid::from_u128(1),
                source_connection_id: Uuid::from_u128(2),
                organization_id: Uuid::from_u128(3),
                short_name: "timed".into(),
                config: serde_json::json!({"entity_count": 300, "note": "x".repeat(400)}),
            },
            at,
        )
        .unwrap();
        for event in [
            SyncJobEvent::JobStarted {
                worker: "w-1".into(),
            },
            SyncJobEvent::JobFailed {
                error: "boom".into(),
                error_category: Some("source".into()),
                counts: EntityCounts {
                    inserted: 7,
                    ..Default::default()
                },
                counts_reconciled: false,
            },
        ] {
            state.evolve_in_place(&event, at).unwrap();
        }
        let encoded = encode_job(&state).unwrap();
        assert_eq!(encoded, rmp_serde::to_vec(&state).unwrap());
        assert!(encoded.len() > 256, "the buffer grows past its first size");
        assert_eq!(decode_job(&encoded).unwrap(), state);
    }
}
