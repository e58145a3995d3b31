//! The writer: folds recorded events into the read model's rows.
//!
//! A batch is one transaction: its rows and the new position commit together, so a crash
//! leaves the position of the last committed batch and a restart folds from there (an event
//! is never applied twice nor skipped). The fold is idempotent by global position and never
//! fails on an event: one that makes no sense for the model (a late job event after a final
//! state, a job of an unknown source connection) is logged and skipped, the same way on
//! every rebuild.
//!
//! Only live jobs are held in memory (each event of a job is folded into its state there, and
//! the row is written once per batch); final jobs live only in the database.

use super::{encode_job, time, ReadError, PROJECTION_NAME};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::{HashMap, HashSet};
use syncjobs_domain::events::stream;
use syncjobs_domain::{
    AccessEvent, CollectionEvent, Event, JobState, JobStatus, RecordedEvent, SourceConnectionEvent,
    SyncJobEvent,
};
use syncjobs_store_sqlite::wal_checkpoint::Checkpointer;
use uuid::Uuid;

/// Final job rows of deleted connections removed per purge transaction: small enough that
/// a step never holds the writer for long, large enough that 100,000 rows go in well under
/// a second.
pub const PURGE_BATCH: usize = 1_000;

/// A job not final yet, with the position of its creation (its row's order).
#[derive(Debug, Clone)]
struct LiveJob {
    state: JobState,
    created_position: u64,
}

/// What a committed batch changed that readers may have cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed {
    pub position: u64,
    /// A source connection was deleted: its final jobs vanished from reads.
    pub jobs_changed: bool,
    /// Organizations or keys changed: authentication must look again.
    pub keys_changed: bool,
}

/// The single writer of the read model (the projector owns it).
pub struct Writer {
    conn: Connection,
    position: u64,
    live: HashMap<Uuid, LiveJob>,
    /// Stopped (after a checkpoint under way) when the writer goes.
    checkpointer: Option<Checkpointer>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
    }
}

/// One batch's work in progress.
struct Batch<'t> {
    tx: &'t Transaction<'t>,
    live: &'t mut HashMap<Uuid, LiveJob>,
    /// Jobs whose row must be written at commit.
    touched: HashSet<Uuid>,
    /// Jobs that became final in this batch (no longer in `live`).
    finished: HashMap<Uuid, LiveJob>,
    /// Source connection -> its organization if it exists, as looked up in this batch (a
    /// job's creation and its end each need it; a rebuild folds one of each per job).
    connections: HashMap<Uuid, Option<Uuid>>,
    committed: Committed,
}

impl Writer {
    /// The writer of an opened database: its position and its live jobs.
    pub(crate) fn load(conn: Connection, checkpointer: Checkpointer) -> Result<Writer, ReadError> {
        let mut w = Writer {
            conn,
            position: 0,
            live: HashMap::new(),
            checkpointer: Some(checkpointer),
        };
        w.reload()?;
        Ok(w)
    }

    /// Reads the position and the live jobs back from the database (at start, and after a
    /// batch failed to commit, whose changes to the live jobs are then forgotten).
    fn reload(&mut self) -> Result<(), ReadError> {
        self.position = stored_position(&self.conn)?;
        self.live.clear();
        let mut stmt = self
            .conn
            .prepare("SELECT state, created_position FROM jobs WHERE active = 1")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let state = super::decode_job(r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?)?;
            let created_position = r.get::<_, i64>(1)? as u64;
            self.live.insert(
                state.job_id,
                LiveJob {
                    state,
                    created_position,
                },
            );
        }
        Ok(())
    }

    /// The global position of the last event committed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Ids of every job that is pending, running or cancelling: what the supervisor
    /// recovers at start-up.
    pub fn unfinished_jobs(&self) -> Vec<Uuid> {
        self.live.keys().copied().collect()
    }

    /// Folds `events` in and commits them with the new position, in one transaction.
    /// On an error nothing of the batch is kept (the position stays where it was).
    pub fn apply_batch(
        &mut self,
        events: impl IntoIterator<Item = RecordedEvent>,
    ) -> Result<Committed, ReadError> {
        let result = self.try_batch(events);
        if result.is_err() {
            // The transaction rolled back; the live jobs may hold its changes.
            self.reload()?;
        }
        result
    }

    fn try_batch(
        &mut self,
        events: impl IntoIterator<Item = RecordedEvent>,
    ) -> Result<Committed, ReadError> {
        // The write lock from the start, and the position as stored under it: a second
        // writer on the file (a server still stopping while the next one starts on the same
        // data directory, as tests do) can never make an event apply twice.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored = stored_position(&tx)?;
        if stored != self.position {
            drop(tx);
            tracing::warn!(
                stored,
                folded = self.position,
                "the read model was moved by another writer; taking its state"
            );
            self.reload()?;
            return self.try_batch(events);
        }
        let mut position = self.position;
        let committed = {
            let mut batch = Batch {
                tx: &tx,
                live: &mut self.live,
                touched: HashSet::new(),
                finished: HashMap::new(),
                connections: HashMap::new(),
                committed: Committed::default(),
            };
            for e in events {
                if e.global_position <= position {
                    continue;
                }
                position = e.global_position;
                batch.apply(e)?;
            }
            batch.write_jobs()?;
            batch.committed
        };
        tx.execute(
            "UPDATE projection SET position = ?2 WHERE name = ?1",
            params![PROJECTION_NAME, position as i64],
        )?;
        tx.commit()?;
        self.position = position;
        Ok(Committed {
            position,
            ..committed
        })
    }

    /// Removes up to [`PURGE_BATCH`] final jobs of a deleted source connection, in one
    /// transaction. Returns whether there is more to purge.
    pub fn purge_step(&mut self) -> Result<bool, ReadError> {
        let tx = self.conn.transaction()?;
        let next: Option<Uuid> = tx
            .query_row(
                "SELECT source_connection_id FROM purge_queue LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sc) = next else {
            return Ok(false);
        };
        let removed = tx.execute(
            "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs
              WHERE source_connection_id = ?1 AND active = 0 LIMIT ?2)",
            params![sc, PURGE_BATCH as i64],
        )?;
        if removed < PURGE_BATCH {
            tx.execute(
                "DELETE FROM purge_queue WHERE source_connection_id = ?1",
                [sc],
            )?;
        }
        tx.commit()?;
        tracing::debug!(source_connection_id = %sc, removed, "purged jobs of a deleted source connection");
        Ok(true)
    }
}

/// The position stored with the rows.
fn stored_position(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT position FROM projection WHERE name = ?1",
        [PROJECTION_NAME],
        |r| r.get::<_, i64>(0),
    )
    .map(|p| p as u64)
}

/// Whether `table` has the row `id`.
fn has_row(tx: &Transaction<'_>, table: &str, id: Uuid) -> rusqlite::Result<bool> {
    Ok(tx
        .prepare_cached(&format!("SELECT 1 FROM {table} WHERE id = ?1"))?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Deletes the row `id` of `table`; the organization it belonged to, if it existed.
fn remove_row(tx: &Transaction<'_>, table: &str, id: Uuid) -> rusqlite::Result<Option<Uuid>> {
    tx.prepare_cached(&format!(
        "DELETE FROM {table} WHERE id = ?1 RETURNING organization_id"
    ))?
    .query_row([id], |r| r.get(0))
    .optional()
}

fn add_counts(
    tx: &Transaction<'_>,
    organization_id: Uuid,
    collections: i64,
    source_connections: i64,
    active_jobs: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO organization_counts (organization_id, collections, source_connections, active_jobs)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (organization_id) DO UPDATE SET
           collections = collections + excluded.collections,
           source_connections = source_connections + excluded.source_connections,
           active_jobs = active_jobs + excluded.active_jobs",
    )?
    .execute(params![organization_id, collections, source_connections, active_jobs])?;
    Ok(())
}

/// The organization of an existing source connection.
fn connection_organization(tx: &Transaction<'_>, id: Uuid) -> rusqlite::Result<Option<Uuid>> {
    tx.prepare_cached("SELECT organization_id FROM source_connections WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
}

impl Batch<'_> {
    /// The organization of an existing source connection (looked up once per batch).
    fn connection_organization(&mut self, id: Uuid) -> rusqlite::Result<Option<Uuid>> {
        if let Some(org) = self.connections.get(&id) {
            return Ok(*org);
        }
        let org = connection_organization(self.tx, id)?;
        self.connections.insert(id, org);
        Ok(org)
    }

    fn apply(&mut self, e: RecordedEvent) -> Result<(), ReadError> {
        let at = e.recorded_at;
        let position = e.global_position;
        match e.event {
            Event::Job(job_event) => match stream::job_id(&e.stream_id) {
                Some(job_id) => self.apply_job(job_id, job_event, at, position)?,
                None => tracing::warn!(
                    stream = %e.stream_id,
                    position,
                    "job event outside a job stream; skipped"
                ),
            },
            Event::Collection(c) => self.apply_collection(c, at, position)?,
            Event::SourceConnection(s) => self.apply_source_connection(s, at, position)?,
            Event::Access(a) => {
                self.committed.keys_changed = true;
                self.apply_access(a, at, position)?
            }
        }
        Ok(())
    }

    /// The job's state if it is known at all: live, final in this batch, or a stored row.
    fn known_status(&self, job_id: Uuid) -> Result<Option<JobStatus>, ReadError> {
        if let Some(j) = self.live.get(&job_id).or(self.finished.get(&job_id)) {
            return Ok(Some(j.state.status));
        }
        let stored: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
            .query_row([job_id], |r| r.get(0))
            .optional()?;
        stored
            .map(|b| super::decode_job(&b).map(|s| s.status))
            .transpose()
    }

    fn apply_job(
        &mut self,
        job_id: Uuid,
        event: SyncJobEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        if let SyncJobEvent::JobCreated { .. } = event {
            return self.job_created(job_id, event, at, position);
        }
        let Some(job) = self.live.get_mut(&job_id) else {
            match self.known_status(job_id)? {
                Some(status) => tracing::warn!(
                    %job_id,
                    %status,
                    event = event.event_type(),
                    "event after a final state; skipped"
                ),
                None => {
                    tracing::debug!(%job_id, event = event.event_type(), "event of an unknown job; skipped")
                }
            }
            return Ok(());
        };
        if let Err(err) = job.state.evolve_in_place(&event, at) {
            tracing::error!(%job_id, %err, "job event does not fold; skipped");
            return Ok(());
        }
        let status = job.state.status;
        if !status.is_final() {
            self.touched.insert(job_id);
            return Ok(());
        }
        let Some(job) = self.live.remove(&job_id) else {
            return Ok(());
        };
        let sc_id = job.state.source_connection_id;
        match self.connection_organization(sc_id)? {
            Some(org) => {
                let column = match status {
                    JobStatus::Completed => Some("successful_runs"),
                    JobStatus::Failed => Some("failed_runs"),
                    _ => None,
                };
                if let Some(column) = column {
                    self.tx
                        .prepare_cached(&format!(
                            "UPDATE source_connections SET {column} = {column} + 1 WHERE id = ?1"
                        ))?
                        .execute([sc_id])?;
                }
                add_counts(self.tx, org, 0, 0, -1)?;
                self.finished.insert(job_id, job);
                self.touched.insert(job_id);
            }
            // Its connection is gone: nobody can read the job any more.
            None => {
                self.touched.remove(&job_id);
                self.tx
                    .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                    .execute([job_id])?;
            }
        }
        Ok(())
    }

    fn job_created(
        &mut self,
        job_id: Uuid,
        event: SyncJobEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        if self.known_status(job_id)?.is_some() {
            tracing::warn!(%job_id, "JobCreated for a known job; skipped");
            return Ok(());
        }
        let Ok(state) = JobState::created(event, at) else {
            return Ok(());
        };
        let sc_id = state.source_connection_id;
        self.live.insert(
            job_id,
            LiveJob {
                state,
                created_position: position,
            },
        );
        self.touched.insert(job_id);
        if let Some(org) = self.connection_organization(sc_id)? {
            self.tx
                .prepare_cached(
                    "UPDATE source_connections SET total_runs = total_runs + 1 WHERE id = ?1",
                )?
                .execute([sc_id])?;
            add_counts(self.tx, org, 0, 0, 1)?;
        }
        Ok(())
    }

    /// Writes the row of every job the batch changed, once.
    fn write_jobs(&mut self) -> Result<(), ReadError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO jobs (id, source_connection_id, organization_id, active, created_position, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET active = excluded.active, state = excluded.state",
        )?;
        for id in &self.touched {
            let Some(job) = self.live.get(id).or(self.finished.get(id)) else {
                continue;
            };
            let s = &job.state;
            stmt.execute(params![
                s.job_id,
                s.source_connection_id,
                s.organization_id,
                s.status.is_active(),
                job.created_position as i64,
                encode_job(s)?,
            ])?;
        }
        Ok(())
    }

    fn apply_collection(
        &mut self,
        event: CollectionEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        match event {
            CollectionEvent::CollectionCreated {
                collection_id,
                organization_id,
                name,
                readable_id,
            } => {
                if has_row(self.tx, "collections", collection_id)? {
                    tracing::warn!(%collection_id, "CollectionCreated for a known collection; skipped");
                    return Ok(());
                }
                let at = time(&at);
                self.tx
                    .prepare_cached(
                        "INSERT INTO collections (id, organization_id, name, readable_id,
                           created_at, modified_at, created_position)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                    )?
                    .execute(params![
                        collection_id,
                        organization_id,
                        name,
                        readable_id,
                        at,
                        position as i64
                    ])?;
                add_counts(self.tx, organization_id, 1, 0, 0)?;
            }
            CollectionEvent::CollectionDeleted { collection_id } => {
                if let Some(org) = remove_row(self.tx, "collections", collection_id)? {
                    add_counts(self.tx, org, -1, 0, 0)?;
                }
            }
        }
        Ok(())
    }

    fn apply_source_connection(
        &mut self,
        event: SourceConnectionEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        match event {
            SourceConnectionEvent::SourceConnectionCreated {
                source_connection_id,
                organization_id,
                collection_id,
                readable_collection_id,
                name,
                description,
                short_name,
                config,
                auth_method,
                authenticated,
            } => {
                if has_row(self.tx, "source_connections", source_connection_id)? {
                    tracing::warn!(%source_connection_id, "SourceConnectionCreated for a known one; skipped");
                    return Ok(());
                }
                let at = time(&at);
                self.tx
                    .prepare_cached(
                        "INSERT INTO source_connections (id, organization_id, collection_id,
                           readable_collection_id, name, description, short_name, config,
                           auth_method, authenticated, created_at, modified_at, created_position,
                           total_runs, successful_runs, failed_runs)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, 0, 0, 0)",
                    )?
                    .execute(params![
                        source_connection_id,
                        organization_id,
                        collection_id,
                        readable_collection_id,
                        name,
                        description,
                        short_name,
                        config,
                        auth_method,
                        authenticated,
                        at,
                        position as i64
                    ])?;
                add_counts(self.tx, organization_id, 0, 1, 0)?;
                self.connections
                    .insert(source_connection_id, Some(organization_id));
            }
            SourceConnectionEvent::SourceConnectionDeleted {
                source_connection_id: id,
            } => {
                let Some(org) = remove_row(self.tx, "source_connections", id)? else {
                    return Ok(());
                };
                self.connections.insert(id, None);
                // Its final jobs vanish from reads now (a job is readable while its
                // connection exists or while it is active) and their rows go in later
                // transactions; live ones stay findable until they end.
                let live = self
                    .live
                    .values()
                    .filter(|j| j.state.source_connection_id == id)
                    .count() as i64;
                add_counts(self.tx, org, 0, -1, -live)?;
                self.tx
                    .prepare_cached(
                        "INSERT INTO purge_queue (source_connection_id) VALUES (?1)
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute([id])?;
                self.committed.jobs_changed = true;
            }
        }
        Ok(())
    }

    fn apply_access(
        &mut self,
        event: AccessEvent,
        at: DateTime<Utc>,
        position: u64,
    ) -> Result<(), ReadError> {
        match event {
            AccessEvent::OrganizationCreated {
                organization_id,
                name,
            } => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO organizations (id, name, created_at, created_position)
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(params![organization_id, name, time(&at), position as i64])?;
            }
            AccessEvent::ApiKeyCreated {
                key_id,
                organization_id,
                key_hash,
                prefix,
                expires_at,
            } => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO api_keys (key_id, organization_id, key_hash, prefix,
                           created_at, expires_at, revoked_at, created_position)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7) ON CONFLICT (key_id) DO NOTHING",
                    )?
                    .execute(params![
                        key_id,
                        organization_id,
                        key_hash,
                        prefix,
                        time(&at),
                        expires_at.as_ref().map(time),
                        position as i64
                    ])?;
            }
            AccessEvent::ApiKeyRevoked { key_id } => {
                self.tx
                    .prepare_cached(
                        "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL",
                    )?
                    .execute(params![key_id, time(&at)])?;
            }
        }
        Ok(())
    }
}
