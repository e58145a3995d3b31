//! The SQLite writer: a batch of the [`fold`](super::fold) in one transaction with the new
//! position, so a crash leaves the position of the last committed batch and a restart folds
//! from there (an event is never applied twice nor skipped).
//!
//! A single writer owns the file, so every live job is held in memory (loaded at start).

use super::fold::{
    Committed, Fold, JobRow, LiveJob, NewDelivery, NewMessage, OrgCounts, Retention, Rows,
    RunCounts, Table, PURGE_BATCH, RETENTION_BATCH,
};
use super::{time as t, ReadError, PROJECTION_NAME};
use crate::model::{
    ApiKey, Collection, Organization, SourceConnection, WebhookAttempt, WebhookSubscription,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use syncjobs_domain::{JobState, RecordedEvent};
use syncjobs_store_sqlite::wal_checkpoint::Checkpointer;
use uuid::Uuid;

/// The single writer of the read model (the projector owns it).
pub struct Writer {
    conn: Connection,
    fold: Fold,
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

/// Runs a future over SQLite's synchronous calls, which never waits, to its end.
fn now<F: Future>(f: F) -> Result<F::Output, ReadError> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(ReadError::Task(
            "a SQLite fold waited on something".to_owned(),
        )),
    }
}

impl Writer {
    /// The writer of an opened database: its position and its live jobs.
    pub(crate) fn load(conn: Connection, checkpointer: Checkpointer) -> Result<Writer, ReadError> {
        let mut w = Writer {
            conn,
            fold: Fold::default(),
            checkpointer: Some(checkpointer),
        };
        w.reload()?;
        Ok(w)
    }

    /// Reads the position and the live jobs back from the database (at start, and after a
    /// batch failed to commit, whose changes to the live jobs are then forgotten).
    fn reload(&mut self) -> Result<(), ReadError> {
        self.fold.position = stored_position(&self.conn)?;
        self.fold.forget();
        let mut stmt = self
            .conn
            .prepare("SELECT state, created_position FROM jobs WHERE active = 1")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let job = live_job(r)?;
            self.fold.live.insert(job.state.job_id, job);
        }
        self.fold.complete = true;
        Ok(())
    }

    /// The global position of the last event committed.
    pub fn position(&self) -> u64 {
        self.fold.position
    }

    /// Folds `events` in and commits them with the new position, in one transaction.
    /// On an error nothing of the batch is kept (the position stays where it was).
    pub fn apply_batch(&mut self, events: Vec<RecordedEvent>) -> Result<Committed, ReadError> {
        let result = self.try_batch(events);
        if result.is_err() {
            // The transaction rolled back; the live jobs may hold its changes.
            self.reload()?;
        }
        result
    }

    fn try_batch(&mut self, events: Vec<RecordedEvent>) -> Result<Committed, ReadError> {
        // The write lock from the start, and the position as stored under it: a second
        // writer on the file (a server still stopping while the next one starts on the same
        // data directory, as tests do) can never make an event apply twice.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored = stored_position(&tx)?;
        if stored != self.fold.position {
            drop(tx);
            tracing::warn!(
                stored,
                folded = self.fold.position,
                "the read model was moved by another writer; taking its state"
            );
            self.reload()?;
            return self.try_batch(events);
        }
        let rows = SqliteRows(&tx);
        let (committed, writes) = now(self.fold.apply(&rows, events))??;
        now(writes.write_to(&rows))??;
        if committed.position != stored {
            tx.execute(
                "UPDATE projection SET position = ?2 WHERE name = ?1",
                params![PROJECTION_NAME, committed.position as i64],
            )?;
        }
        tx.commit()?;
        Ok(committed)
    }

    /// Keeps webhook messages for `retention` (None: for ever).
    pub fn set_retention(&mut self, retention: Option<Retention>) {
        self.fold.retention = retention;
        self.fold.next_retention = None;
    }

    /// One step of the purges: final jobs of deleted source connections first, then (when
    /// due) webhook messages past retention. Returns whether there is more to purge.
    pub fn purge_step(&mut self) -> Result<bool, ReadError> {
        if self.purge_jobs_step()? {
            return Ok(true);
        }
        let Some(cutoff) = self.fold.retention_due() else {
            return Ok(false);
        };
        let removed = self.retention_step(&t(&cutoff))?;
        self.fold.retention_done(removed);
        Ok(removed >= RETENTION_BATCH)
    }

    /// Removes up to [`RETENTION_BATCH`] messages recorded before `cutoff`, oldest first,
    /// with their deliveries (pending ones too) and attempts, in one transaction.
    fn retention_step(&mut self, cutoff: &str) -> Result<usize, ReadError> {
        let tx = self.conn.transaction()?;
        let ids: Vec<Uuid> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM webhook_messages WHERE timestamp < ?1 ORDER BY timestamp LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cutoff, RETENTION_BATCH as i64], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in &ids {
            for sql in [
                "DELETE FROM webhook_deliveries WHERE message_id = ?1",
                "DELETE FROM webhook_attempts WHERE message_id = ?1",
                "DELETE FROM webhook_messages WHERE id = ?1",
            ] {
                tx.prepare_cached(sql)?.execute([id])?;
            }
        }
        tx.commit()?;
        if !ids.is_empty() {
            tracing::debug!(
                removed = ids.len(),
                "webhook messages past retention purged"
            );
        }
        Ok(ids.len())
    }

    /// Removes up to [`PURGE_BATCH`] final jobs of a deleted source connection, in one
    /// transaction. Returns whether there is more to purge.
    fn purge_jobs_step(&mut self) -> Result<bool, ReadError> {
        if self.fold.purge_known_empty {
            return Ok(false);
        }
        let tx = self.conn.transaction()?;
        let next: Option<Uuid> = tx
            .query_row(
                "SELECT source_connection_id FROM purge_queue LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sc) = next else {
            self.fold.purge_known_empty = true;
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

/// A job row's `(state, created_position)` as a live job.
fn live_job(r: &rusqlite::Row<'_>) -> Result<LiveJob, ReadError> {
    let state = super::decode_job(r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?)?;
    Ok(LiveJob {
        state,
        created_position: r.get::<_, i64>(1)? as u64,
        stored: true,
    })
}

/// The fold's row operations on a SQLite transaction (statements cached per connection).
struct SqliteRows<'t>(&'t Transaction<'t>);

impl Rows for SqliteRows<'_> {
    async fn has_row(&self, table: Table, id: Uuid) -> Result<bool, ReadError> {
        Ok(self
            .0
            .prepare_cached(&format!("SELECT 1 FROM {} WHERE id = ?1", table.name()))?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    async fn remove_row(&self, table: Table, id: Uuid) -> Result<Option<Uuid>, ReadError> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "DELETE FROM {} WHERE id = ?1 RETURNING organization_id",
                table.name()
            ))?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    async fn add_counts(&self, deltas: &[(Uuid, OrgCounts)]) -> Result<(), ReadError> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO organization_counts (organization_id, collections, source_connections, active_jobs)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (organization_id) DO UPDATE SET
               collections = collections + excluded.collections,
               source_connections = source_connections + excluded.source_connections,
               active_jobs = active_jobs + excluded.active_jobs",
        )?;
        for (organization_id, d) in deltas {
            stmt.execute(params![organization_id, d[0], d[1], d[2]])?;
        }
        Ok(())
    }

    async fn connection_organizations(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, ReadError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT organization_id FROM source_connections WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(org) = stmt.query_row([id], |r| r.get(0)).optional()? {
                out.push((*id, org));
            }
        }
        Ok(out)
    }

    async fn count_runs(&self, runs: &[(Uuid, RunCounts)]) -> Result<(), ReadError> {
        let mut stmt = self.0.prepare_cached(
            "UPDATE source_connections SET total_runs = total_runs + ?2,
               successful_runs = successful_runs + ?3, failed_runs = failed_runs + ?4
             WHERE id = ?1",
        )?;
        for (id, r) in runs {
            stmt.execute(params![id, r[0], r[1], r[2]])?;
        }
        Ok(())
    }

    async fn stored_job(&self, id: Uuid) -> Result<Option<JobState>, ReadError> {
        let stored: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        stored.map(|b| super::decode_job(&b)).transpose()
    }

    async fn stored_jobs(&self, ids: &[Uuid]) -> Result<Vec<LiveJob>, ReadError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT state, created_position FROM jobs WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            let mut rows = stmt.query([id])?;
            if let Some(r) = rows.next()? {
                out.push(live_job(r)?);
            }
        }
        Ok(out)
    }

    async fn active_jobs_of(&self, source_connection_id: Uuid) -> Result<i64, ReadError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE source_connection_id = ?1 AND active = 1",
            )?
            .query_row([source_connection_id], |r| r.get(0))?)
    }

    async fn delete_job(&self, id: Uuid) -> Result<(), ReadError> {
        self.0
            .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    async fn write_jobs(&self, rows: &[JobRow]) -> Result<(), ReadError> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO jobs (id, source_connection_id, organization_id, active, created_position, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET active = excluded.active, state = excluded.state",
        )?;
        for j in rows {
            stmt.execute(params![
                j.id,
                j.source_connection_id,
                j.organization_id,
                j.active,
                j.created_position as i64,
                j.state,
            ])?;
        }
        Ok(())
    }

    async fn enqueue_purge(&self, source_connection_id: Uuid) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "INSERT INTO purge_queue (source_connection_id) VALUES (?1)
                 ON CONFLICT DO NOTHING",
            )?
            .execute([source_connection_id])?;
        Ok(())
    }

    async fn insert_collection(&self, c: &Collection) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "INSERT INTO collections (id, organization_id, name, readable_id,
                   created_at, modified_at, created_position)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                c.id,
                c.organization_id,
                c.name,
                c.readable_id,
                t(&c.created_at),
                t(&c.modified_at),
                c.created_position as i64
            ])?;
        Ok(())
    }

    async fn rename_collection(&self, id: Uuid, name: &str, at: &str) -> Result<(), ReadError> {
        self.0
            .prepare_cached("UPDATE collections SET name = ?2, modified_at = ?3 WHERE id = ?1")?
            .execute(params![id, name, at])?;
        Ok(())
    }

    async fn insert_source_connection(&self, sc: &SourceConnection) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "INSERT INTO source_connections (id, organization_id, collection_id,
                   readable_collection_id, name, description, short_name, config,
                   auth_method, authenticated, created_at, modified_at, created_position,
                   total_runs, successful_runs, failed_runs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                sc.id,
                sc.organization_id,
                sc.collection_id,
                sc.readable_collection_id,
                sc.name,
                sc.description,
                sc.short_name,
                sc.config,
                sc.auth_method,
                sc.authenticated,
                t(&sc.created_at),
                t(&sc.modified_at),
                sc.created_position as i64,
                sc.total_runs as i64,
                sc.successful_runs as i64,
                sc.failed_runs as i64,
            ])?;
        Ok(())
    }

    async fn insert_organization(&self, o: &Organization, position: u64) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "INSERT INTO organizations (id, name, created_at, created_position)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![o.id, o.name, t(&o.created_at), position as i64])?;
        Ok(())
    }

    async fn insert_api_key(&self, k: &ApiKey, position: u64) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "INSERT INTO api_keys (key_id, organization_id, key_hash, prefix,
                   created_at, expires_at, revoked_at, created_position)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (key_id) DO NOTHING",
            )?
            .execute(params![
                k.key_id,
                k.organization_id,
                k.key_hash,
                k.prefix,
                t(&k.created_at),
                k.expires_at.as_ref().map(t),
                k.revoked_at.as_ref().map(t),
                position as i64
            ])?;
        Ok(())
    }

    async fn revoke_api_key(&self, key_id: Uuid, at: &str) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![key_id, at])?;
        Ok(())
    }

    async fn webhook_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<WebhookSubscription>, ReadError> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {} FROM webhook_subscriptions WHERE id = ?1",
                super::view::WEBHOOK_SUBSCRIPTION_COLUMNS
            ))?
            .query_row([id], super::view::webhook_subscription_row)
            .optional()?)
    }

    async fn write_webhook_subscription(&self, s: &WebhookSubscription) -> Result<(), ReadError> {
        let types =
            serde_json::to_string(&s.event_types).map_err(|e| ReadError::Decode(e.to_string()))?;
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO webhook_subscriptions (id, organization_id, url,
                   event_types, disabled, description, secret, created_at, updated_at,
                   created_position, disabled_reason, failing_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                s.id,
                s.organization_id,
                s.url,
                types,
                s.disabled,
                s.description,
                s.secret,
                t(&s.created_at),
                t(&s.updated_at),
                s.created_position as i64,
                s.disabled_reason,
                s.failing_since.as_ref().map(t),
            ])?;
        Ok(())
    }

    async fn cancel_webhook_deliveries(&self, subscription_id: Uuid) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "UPDATE webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL
                 WHERE subscription_id = ?1 AND status = 'pending'",
            )?
            .execute([subscription_id])?;
        Ok(())
    }

    async fn source_connection_row(&self, id: Uuid) -> Result<Option<SourceConnection>, ReadError> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {} FROM source_connections WHERE id = ?1",
                super::view::SOURCE_CONNECTION_COLUMNS
            ))?
            .query_row([id], super::view::source_connection_row)
            .optional()?)
    }

    async fn collection_row(&self, id: Uuid) -> Result<Option<Collection>, ReadError> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {} FROM collections WHERE id = ?1",
                super::view::COLLECTION_COLUMNS
            ))?
            .query_row([id], super::view::collection_row)
            .optional()?)
    }

    async fn webhook_subscriptions_of(
        &self,
        organization_ids: &[Uuid],
    ) -> Result<Vec<WebhookSubscription>, ReadError> {
        let mut stmt = self.0.prepare_cached(&format!(
            "SELECT {} FROM webhook_subscriptions WHERE organization_id = ?1",
            super::view::WEBHOOK_SUBSCRIPTION_COLUMNS
        ))?;
        let mut out = Vec::new();
        for org in organization_ids {
            for s in stmt.query_map([org], super::view::webhook_subscription_row)? {
                out.push(s?);
            }
        }
        Ok(out)
    }

    /// A cached statement per row: SQLite runs in this process, so a statement costs no
    /// round trip and a multi-row one would only add building its text.
    async fn insert_webhook_messages(&self, messages: &[NewMessage]) -> Result<(), ReadError> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO webhook_messages (id, organization_id, event_type, payload,
               timestamp, created_position)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
        )?;
        for m in messages {
            stmt.execute(params![
                m.id,
                m.organization_id,
                m.event_type,
                m.payload,
                t(&m.timestamp),
                m.created_position as i64
            ])?;
        }
        Ok(())
    }

    async fn insert_webhook_deliveries(&self, deliveries: &[NewDelivery]) -> Result<(), ReadError> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO webhook_deliveries (message_id, subscription_id, organization_id,
               status, attempts, round_start, next_attempt_at, created_position)
             VALUES (?1, ?2, ?3, 'pending', 0, 0, ?4, ?5) ON CONFLICT DO NOTHING",
        )?;
        for d in deliveries {
            stmt.execute(params![
                d.message_id,
                d.subscription_id,
                d.organization_id,
                d.due,
                d.created_position as i64
            ])?;
        }
        Ok(())
    }

    async fn deliver_past_messages(
        &self,
        s: &WebhookSubscription,
        since: &str,
        due: &str,
    ) -> Result<(), ReadError> {
        let types =
            serde_json::to_string(&s.event_types).map_err(|e| ReadError::Decode(e.to_string()))?;
        let made = self
            .0
            .prepare_cached(
                "INSERT INTO webhook_deliveries (message_id, subscription_id, organization_id,
                   status, attempts, round_start, next_attempt_at, created_position)
                 SELECT m.id, ?1, m.organization_id, 'pending', 0, 0, ?5, m.created_position
                 FROM webhook_messages m
                 WHERE m.organization_id = ?2 AND m.timestamp >= ?3
                   AND m.event_type IN (SELECT value FROM json_each(?4))
                 ORDER BY m.created_position
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![s.id, s.organization_id, since, types, due])?;
        tracing::debug!(subscription_id = %s.id, made, "past webhook messages to deliver");
        Ok(())
    }

    async fn record_webhook_attempt(
        &self,
        a: &WebhookAttempt,
        status: &str,
        next_attempt_at: Option<&str>,
        position: u64,
    ) -> Result<(), ReadError> {
        let inserted = self
            .0
            .prepare_cached(
                "INSERT INTO webhook_attempts (id, message_id, subscription_id, organization_id,
                   attempt, url, status_code, response, timestamp, created_position)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
                 WHERE EXISTS (SELECT 1 FROM webhook_messages WHERE id = ?2)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                a.id,
                a.message_id,
                a.subscription_id,
                a.organization_id,
                a.attempt,
                a.url,
                a.status_code,
                a.response,
                t(&a.timestamp),
                position as i64
            ])?;
        if inserted == 0 {
            return Ok(());
        }
        self.0
            .prepare_cached(
                "UPDATE webhook_deliveries SET status = ?3, attempts = ?4, next_attempt_at = ?5
                 WHERE message_id = ?1 AND subscription_id = ?2 AND status <> 'cancelled'",
            )?
            .execute(params![
                a.message_id,
                a.subscription_id,
                status,
                a.attempt,
                next_attempt_at
            ])?;
        self.0
            .prepare_cached(
                "UPDATE webhook_subscriptions SET failing_since =
                   CASE WHEN ?2 THEN NULL ELSE coalesce(failing_since, ?3) END
                 WHERE id = ?1",
            )?
            .execute(params![
                a.subscription_id,
                (200..300).contains(&a.status_code),
                t(&a.timestamp)
            ])?;
        Ok(())
    }

    async fn recover_webhook_delivery(
        &self,
        message_id: Uuid,
        subscription_id: Uuid,
        due: &str,
    ) -> Result<(), ReadError> {
        self.0
            .prepare_cached(
                "UPDATE webhook_deliveries SET status = 'pending', round_start = attempts,
                   next_attempt_at = ?3
                 WHERE message_id = ?1 AND subscription_id = ?2 AND status = 'failed'",
            )?
            .execute(params![message_id, subscription_id, due])?;
        Ok(())
    }
}
