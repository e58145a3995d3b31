//! The PostgreSQL writer: one batch of the [`fold`](crate::db::fold) per transaction, under
//! the lock of the projection's row, with the new position.

use super::pool_error;
use crate::db::fold::{
    Committed, Fold, JobRow, LiveJob, NewDelivery, NewMessage, OrgCounts, Retention, Rows,
    RunCounts, Table, Writes, PURGE_BATCH, RETENTION_BATCH,
};
use crate::db::{decode_job, time as t, ReadError, PROJECTION_NAME};
use crate::model::{
    ApiKey, Collection, Organization, SourceConnection, WebhookAttempt, WebhookSubscription,
};
use deadpool_postgres::Pool;
use syncjobs_domain::{JobState, RecordedEvent};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// This node's writer of the shared read model (its projector owns it).
pub struct PgWriter {
    pool: Pool,
    fold: Fold,
}

impl PgWriter {
    /// The writer at the stored position; it holds no live job yet (each batch loads those
    /// it touches).
    pub(crate) async fn load(pool: Pool) -> Result<PgWriter, ReadError> {
        let client = pool.get().await.map_err(pool_error)?;
        let position = client
            .query_one(
                "SELECT position FROM read_projection WHERE name = $1",
                &[&PROJECTION_NAME],
            )
            .await?
            .get::<_, i64>(0) as u64;
        let mut fold = Fold::default();
        fold.position = position;
        fold.forget();
        Ok(PgWriter { pool, fold })
    }

    /// The position stored when this writer last looked.
    pub fn position(&self) -> u64 {
        self.fold.position
    }

    /// Folds the events of `events` above the stored position and commits them with the
    /// new position; an event another node folded already is not applied again. The
    /// position to publish is at most the batch's last: this node has taken the
    /// invalidations of its events, not yet those of events beyond them (an empty batch
    /// publishes nothing new).
    pub async fn apply_batch(
        &mut self,
        events: Vec<RecordedEvent>,
    ) -> Result<Committed, ReadError> {
        let last = events.iter().map(|e| e.global_position).max();
        let result = self.try_batch(events).await;
        match result {
            Ok(mut committed) => {
                committed.position = committed.position.min(last.unwrap_or(0));
                Ok(committed)
            }
            Err(e) => {
                // Rolled back: forget what the batch folded in memory, and ask the
                // position again next time.
                self.fold.forget();
                Err(e)
            }
        }
    }

    /// One batch, by the node that takes the projection's row lock first. Every node folds
    /// every batch; the first to lock folds it, and the others need only its commit. They
    /// used to queue for the lock one after another, each holding it for a round trip, and
    /// a command's node waited behind them all (most of a cancel's time across nodes, bench
    /// #14): now a node finding the row locked waits for the holder by sharing the lock
    /// (`FOR SHARE`, which the other waiters do not block), and queues for it only when the
    /// holder folded less than this batch.
    async fn try_batch(&mut self, events: Vec<RecordedEvent>) -> Result<Committed, ReadError> {
        let last = events.iter().map(|e| e.global_position).max().unwrap_or(0);
        let mut queue = false;
        loop {
            let client = self.pool.get().await.map_err(pool_error)?;
            let tx = OpenTx(Some(client));
            let locked = if queue {
                Ok(tx.begin_locked().await?)
            } else {
                tx.begin_or_wait().await?
            };
            let stored = match locked {
                Ok(stored) => stored,
                Err(shared) => {
                    if shared < last {
                        tokio::spawn(tx.commit());
                        queue = true;
                        continue;
                    }
                    // Folded by the holder: only what it made stale here is dropped.
                    self.follow(shared);
                    let rows = PgRows::new(tx.client());
                    let (committed, _) = rows.settled(self.fold.apply(&rows, events).await).await?;
                    drop(rows);
                    tokio::spawn(tx.commit());
                    return Ok(committed);
                }
            };
            self.follow(stored);
            let rows = PgRows::new(tx.client());
            let (committed, writes) = rows.settled(self.fold.apply(&rows, events).await).await?;
            let position = (committed.position != stored).then_some(committed.position);
            if position.is_none() && writes.is_empty() {
                // Nothing folded here (another node had): the lock goes with a commit that
                // nothing waits for, so the position is published a round trip sooner.
                drop(rows);
                tokio::spawn(tx.commit());
                return Ok(committed);
            }
            rows.finish(&writes, position).await?;
            drop(rows);
            tx.done();
            return Ok(committed);
        }
    }

    /// Takes the stored position as this writer's: the batch's events up to it were folded
    /// by another node, and each drops what it made stale here (`Fold::apply`).
    fn follow(&mut self, stored: u64) {
        if stored < self.fold.position {
            // The tables were rebuilt (a node started on another schema version), or this
            // writer's last batch did not commit.
            tracing::debug!(
                stored,
                folded = self.fold.position,
                "the read model is behind this writer; forgetting what it held"
            );
            self.fold.position = stored;
            self.fold.forget();
        }
        if stored > self.fold.position {
            tracing::debug!(
                stored,
                folded = self.fold.position,
                "the read model was moved by another node; following it"
            );
            self.fold.position = stored;
        }
    }

    /// Keeps webhook messages for `retention` (None: for ever).
    pub fn set_retention(&mut self, retention: Option<Retention>) {
        self.fold.retention = retention;
        self.fold.next_retention = None;
    }

    /// One step of the purges: final jobs of deleted source connections first, then (when
    /// due) webhook messages past retention. Returns whether there is more to purge.
    pub async fn purge_step(&mut self) -> Result<bool, ReadError> {
        if self.purge_jobs_step().await? {
            return Ok(true);
        }
        let Some(cutoff) = self.fold.retention_due() else {
            return Ok(false);
        };
        let removed = self.retention_step(&t(&cutoff)).await?;
        self.fold.retention_done(removed);
        Ok(removed >= RETENTION_BATCH)
    }

    /// Removes up to [`RETENTION_BATCH`] messages recorded before `cutoff`, oldest first,
    /// with their deliveries (pending ones too) and attempts, in one transaction; rows
    /// another node is purging are skipped, not waited for.
    async fn retention_step(&mut self, cutoff: &str) -> Result<usize, ReadError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let ids: Vec<Uuid> = tx
            .query(
                "SELECT id FROM read_webhook_messages WHERE timestamp < $1
                 ORDER BY timestamp LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&cutoff, &(RETENTION_BATCH as i64)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            for sql in [
                "DELETE FROM read_webhook_deliveries WHERE message_id = ANY($1)",
                "DELETE FROM read_webhook_attempts WHERE message_id = ANY($1)",
                "DELETE FROM read_webhook_messages WHERE id = ANY($1)",
            ] {
                tx.execute(sql, &[&ids]).await?;
            }
        }
        tx.commit().await?;
        if !ids.is_empty() {
            tracing::debug!(
                removed = ids.len(),
                "webhook messages past retention purged"
            );
        }
        Ok(ids.len())
    }

    /// Removes up to [`PURGE_BATCH`] final jobs of a deleted source connection, in one
    /// transaction (one node at a time per connection). Returns whether there is more.
    async fn purge_jobs_step(&mut self) -> Result<bool, ReadError> {
        if self.fold.purge_known_empty {
            return Ok(false);
        }
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let next = tx
            .query_opt(
                "SELECT source_connection_id FROM read_purge_queue LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await?;
        let Some(sc) = next.map(|r| r.get::<_, Uuid>(0)) else {
            // Empty, or each entry being purged by another node (which may yet die).
            self.fold.purge_known_empty = !tx
                .query_one("SELECT EXISTS (SELECT 1 FROM read_purge_queue)", &[])
                .await?
                .get::<_, bool>(0);
            return Ok(false);
        };
        let removed = tx
            .execute(
                "DELETE FROM read_jobs WHERE id IN (SELECT id FROM read_jobs
                  WHERE source_connection_id = $1 AND NOT active LIMIT $2)",
                &[&sc, &(PURGE_BATCH as i64)],
            )
            .await?;
        if removed < PURGE_BATCH as u64 {
            tx.execute(
                "DELETE FROM read_purge_queue WHERE source_connection_id = $1",
                &[&sc],
            )
            .await?;
        }
        tx.commit().await?;
        tracing::debug!(source_connection_id = %sc, removed, "purged jobs of a deleted source connection");
        Ok(true)
    }
}

/// Fewer new job rows than this go in with the upsert: a `COPY` costs a round trip more.
const COPY_AT_LEAST: usize = 64;

/// The projection's row, locked to fold (waiting for the holder, after the other waiters).
const LOCK_POSITION: &str = "SELECT position FROM read_projection WHERE name = $1 FOR UPDATE";
/// The projection's row, locked to fold unless another transaction holds it (no row then).
const LOCK_OR_SKIP: &str =
    "SELECT position FROM read_projection WHERE name = $1 FOR UPDATE SKIP LOCKED";
/// The position once the node folding has committed (waiters share this lock).
const SHARE_POSITION: &str = "SELECT position FROM read_projection WHERE name = $1 FOR SHARE";
const STORE_POSITION: &str = "UPDATE read_projection SET position = $2 WHERE name = $1";

/// A transaction begun on a pooled connection by hand (so that its statements and its
/// `COMMIT` can go in one pipeline, which `tokio_postgres::Transaction` cannot). Unless it
/// ended, the connection is closed, never handed out again inside a transaction: after an
/// error, or when the future folding the batch is dropped half-way; the server then rolls
/// the transaction back.
struct OpenTx(Option<deadpool_postgres::Object>);

impl OpenTx {
    fn client(&self) -> &deadpool_postgres::ClientWrapper {
        self.0
            .as_deref()
            .expect("taken only by done() or commit(), which consume it")
    }

    /// `BEGIN` and the lock of the position, waiting for it behind the other waiters, in
    /// one round trip (tokio-postgres sends requests in the order their futures are first
    /// polled, and `join!` polls in order); the position.
    async fn begin_locked(&self) -> Result<u64, ReadError> {
        let client = self.client();
        let lock = client.prepare_cached(LOCK_POSITION).await?;
        let (begun, locked) = futures::join!(
            client.batch_execute("BEGIN"),
            client.query_one(&lock, &[&PROJECTION_NAME])
        );
        begun?;
        Ok(locked?.get::<_, i64>(0) as u64)
    }

    /// `BEGIN`, the lock of the position unless another transaction holds it, and the
    /// position shared (which waits for that holder's commit; on a row this transaction
    /// has just locked it answers at once), in one round trip. `Ok`: the lock is held, at
    /// this position; `Err`: another held it, and committed this position.
    async fn begin_or_wait(&self) -> Result<Result<u64, u64>, ReadError> {
        let client = self.client();
        let lock = client.prepare_cached(LOCK_OR_SKIP).await?;
        let share = client.prepare_cached(SHARE_POSITION).await?;
        let (begun, locked, shared) = futures::join!(
            client.batch_execute("BEGIN"),
            client.query_opt(&lock, &[&PROJECTION_NAME]),
            client.query_one(&share, &[&PROJECTION_NAME])
        );
        begun?;
        let shared = shared?.get::<_, i64>(0) as u64;
        Ok(match locked? {
            Some(row) => Ok(row.get::<_, i64>(0) as u64),
            None => Err(shared),
        })
    }

    /// The transaction was committed: the connection goes back to the pool.
    fn done(mut self) {
        self.0.take();
    }

    /// Commits (for a transaction that only held the lock); a failure closes the connection.
    async fn commit(self) {
        if let Err(err) = self.client().batch_execute("COMMIT").await {
            tracing::debug!(%err, "read model: commit of a batch folded elsewhere failed");
            return;
        }
        self.done();
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Parameters of a statement that borrow what they write.
type Params<'a> = Vec<Box<dyn ToSql + Sync + Send + 'a>>;

/// `params` as tokio-postgres takes them.
fn param_refs<'p>(params: &'p Params<'_>) -> Vec<&'p (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// The upsert of job rows: inserts new ones, updates (`active`, `state`) known ones.
fn upsert_jobs<'a>(rows: &[&'a JobRow]) -> (&'static str, Params<'a>) {
    let ids: Vec<Uuid> = rows.iter().map(|j| j.id).collect();
    let scs: Vec<Uuid> = rows.iter().map(|j| j.source_connection_id).collect();
    let orgs: Vec<Uuid> = rows.iter().map(|j| j.organization_id).collect();
    let active: Vec<bool> = rows.iter().map(|j| j.active).collect();
    let created: Vec<i64> = rows.iter().map(|j| j.created_position as i64).collect();
    let states: Vec<&'a [u8]> = rows.iter().map(|j| j.state.as_slice()).collect();
    (
        "INSERT INTO read_jobs
           (id, source_connection_id, organization_id, active, created_position, state)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::boolean[],
                              $5::bigint[], $6::bytea[])
         ON CONFLICT (id) DO UPDATE SET active = excluded.active, state = excluded.state",
        vec![
            Box::new(ids),
            Box::new(scs),
            Box::new(orgs),
            Box::new(active),
            Box::new(created),
            Box::new(states),
        ],
    )
}

/// Adds to organizations' counts, one statement for all.
fn add_counts(deltas: &[(Uuid, OrgCounts)]) -> (&'static str, Params<'static>) {
    let ids: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
    let [collections, connections, active] =
        [0, 1, 2].map(|i| deltas.iter().map(|(_, d)| d[i]).collect::<Vec<i64>>());
    (
        "INSERT INTO read_organization_counts AS c
           (organization_id, collections, source_connections, active_jobs)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
         ON CONFLICT (organization_id) DO UPDATE SET
           collections = c.collections + excluded.collections,
           source_connections = c.source_connections + excluded.source_connections,
           active_jobs = c.active_jobs + excluded.active_jobs",
        vec![
            Box::new(ids),
            Box::new(collections),
            Box::new(connections),
            Box::new(active),
        ],
    )
}

/// Adds to source connections' run counters, one statement for all.
fn count_runs(runs: &[(Uuid, RunCounts)]) -> (&'static str, Params<'static>) {
    let ids: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
    let [total, successful, failed] =
        [0, 1, 2].map(|i| runs.iter().map(|(_, r)| r[i]).collect::<Vec<i64>>());
    (
        "UPDATE read_source_connections s SET total_runs = s.total_runs + d.total,
           successful_runs = s.successful_runs + d.successful,
           failed_runs = s.failed_runs + d.failed
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
           AS d (id, total, successful, failed)
         WHERE s.id = d.id",
        vec![
            Box::new(ids),
            Box::new(total),
            Box::new(successful),
            Box::new(failed),
        ],
    )
}

/// Inserts webhook messages (those that exist are left), one statement for all: one is
/// made for every lifecycle event.
fn insert_messages(messages: &[NewMessage]) -> (&'static str, Params<'_>) {
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let orgs: Vec<Uuid> = messages.iter().map(|m| m.organization_id).collect();
    let types: Vec<&[u8]> = messages.iter().map(|m| m.event_type.as_bytes()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let times: Vec<String> = messages.iter().map(|m| t(&m.timestamp)).collect();
    let positions: Vec<i64> = messages.iter().map(|m| m.created_position as i64).collect();
    (
        "INSERT INTO read_webhook_messages (id, organization_id, event_type, payload,
           timestamp, created_position)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bytea[], $4::bytea[], $5::text[],
                              $6::bigint[])
         ON CONFLICT (id) DO NOTHING",
        vec![
            Box::new(ids),
            Box::new(orgs),
            Box::new(types),
            Box::new(payloads),
            Box::new(times),
            Box::new(positions),
        ],
    )
}

/// Inserts pending deliveries unless they exist, one statement for all.
fn insert_deliveries(deliveries: &[NewDelivery]) -> (&'static str, Params<'_>) {
    let messages: Vec<Uuid> = deliveries.iter().map(|d| d.message_id).collect();
    let subs: Vec<Uuid> = deliveries.iter().map(|d| d.subscription_id).collect();
    let orgs: Vec<Uuid> = deliveries.iter().map(|d| d.organization_id).collect();
    let due: Vec<&str> = deliveries.iter().map(|d| d.due.as_str()).collect();
    let positions: Vec<i64> = deliveries
        .iter()
        .map(|d| d.created_position as i64)
        .collect();
    (
        "INSERT INTO read_webhook_deliveries (message_id, subscription_id, organization_id,
           status, attempts, round_start, next_attempt_at, created_position)
         SELECT d.m, d.s, d.o, 'pending', 0, 0, d.due, d.p
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[])
           AS d (m, s, o, due, p)
         ON CONFLICT DO NOTHING",
        vec![
            Box::new(messages),
            Box::new(subs),
            Box::new(orgs),
            Box::new(due),
            Box::new(positions),
        ],
    )
}

/// The fold's row operations on a PostgreSQL connection inside an [`OpenTx`] (statements
/// prepared once per connection).
struct PgRows<'t> {
    client: &'t deadpool_postgres::ClientWrapper,
    /// Writes sent whose answers are not read yet, oldest first (see [`PgRows::send`]).
    sent: std::sync::Mutex<Vec<Sent<'t>>>,
}

/// A statement sent, its answer still to be read.
type Sent<'t> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 't>,
>;

impl<'t> PgRows<'t> {
    fn new(client: &'t deadpool_postgres::ClientWrapper) -> PgRows<'t> {
        PgRows {
            client,
            sent: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Sends a write whose answer the fold does not need, without waiting for it: the
    /// server runs a connection's statements in order, so every later statement of the
    /// batch sees it, and its answer is read before the `COMMIT` (or an error is
    /// returned). A first start on PostgreSQL waited a round trip for each source
    /// connection created before it folded any job.
    async fn send(&self, sql: &str, params: Params<'static>) -> Result<(), ReadError> {
        let stmt = self.client.prepare_cached(sql).await?;
        let client: &'t tokio_postgres::Client = self.client;
        let mut sent: Sent<'t> =
            Box::pin(async move { client.execute(&stmt, &param_refs(&params)).await });
        // The request goes out on the first poll (see `OpenTx::begin_locked`).
        match futures::poll!(&mut sent) {
            std::task::Poll::Ready(done) => {
                done?;
            }
            std::task::Poll::Pending => self.sent_writes().push(sent),
        }
        Ok(())
    }

    fn sent_writes(&self) -> std::sync::MutexGuard<'_, Vec<Sent<'t>>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the answers of the writes sent; the first error among them.
    async fn settle(&self) -> Result<(), ReadError> {
        let sent = std::mem::take(&mut *self.sent_writes());
        for write in sent {
            write.await?;
        }
        Ok(())
    }

    /// `result` once the writes sent before it are answered: a write sent that failed
    /// aborted the transaction, and its error says why where a later statement's says
    /// only that the transaction was aborted.
    async fn settled<T>(&self, result: Result<T, ReadError>) -> Result<T, ReadError> {
        match (result, self.settle().await) {
            (_, Err(sent)) => Err(sent),
            (result, Ok(())) => result,
        }
    }

    /// Runs one of the statements above.
    async fn run(&self, (sql, params): (&str, Params<'_>)) -> Result<u64, ReadError> {
        self.execute(sql, &param_refs(&params)).await
    }

    /// The batch's last writes, the new position (if it moved) and `COMMIT`, in one
    /// pipeline: a command's fold was a dozen round trips, each a wait (bench #14). Many
    /// new job rows go first by `COPY` (which waits for the server's go-ahead). Every
    /// statement is prepared before any is sent, so that each request goes out on its
    /// future's first poll and all go before the `COMMIT`; if one fails, the server refuses
    /// the rest and turns the `COMMIT` into a rollback, and the first error is returned.
    async fn finish(&self, w: &Writes, position: Option<u64>) -> Result<(), ReadError> {
        let mut statements = Vec::new();
        if !w.messages.is_empty() {
            statements.push(insert_messages(&w.messages));
        }
        if !w.deliveries.is_empty() {
            statements.push(insert_deliveries(&w.deliveries));
        }
        let upserts = self.copy_new_jobs(&w.jobs).await?;
        if !upserts.is_empty() {
            statements.push(upsert_jobs(&upserts));
        }
        if !w.org_counts.is_empty() {
            statements.push(add_counts(&w.org_counts));
        }
        if !w.runs.is_empty() {
            statements.push(count_runs(&w.runs));
        }
        if let Some(p) = position {
            let params: Params<'static> = vec![Box::new(PROJECTION_NAME), Box::new(p as i64)];
            statements.push((STORE_POSITION, params));
        }
        let mut prepared = Vec::with_capacity(statements.len());
        for (sql, params) in &statements {
            prepared.push((self.client.prepare_cached(sql).await?, param_refs(params)));
        }
        let client: &tokio_postgres::Client = self.client;
        let (written, committed) = futures::join!(
            futures::future::join_all(
                prepared
                    .iter()
                    .map(|(stmt, params)| client.execute(stmt, params))
            ),
            client.batch_execute("COMMIT")
        );
        for w in written {
            w?;
        }
        committed?;
        Ok(())
    }

    /// Inserts the new rows among `rows` by `COPY` when there are many; the rows left to
    /// upsert.
    async fn copy_new_jobs<'a>(&self, rows: &'a [JobRow]) -> Result<Vec<&'a JobRow>, ReadError> {
        if rows.iter().filter(|r| r.new).count() < COPY_AT_LEAST {
            return Ok(rows.iter().collect());
        }
        let (new, known): (Vec<&JobRow>, Vec<&JobRow>) = rows.iter().partition(|r| r.new);
        self.copy_jobs(&new).await?;
        Ok(known)
    }

    /// Inserts job rows no row exists for yet, by a binary `COPY`.
    async fn copy_jobs(&self, rows: &[&JobRow]) -> Result<(), ReadError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;
        let sink = self
            .client
            .copy_in(
                "COPY read_jobs (id, source_connection_id, organization_id, active,
                   created_position, state) FROM STDIN BINARY",
            )
            .await?;
        let types = [
            Type::UUID,
            Type::UUID,
            Type::UUID,
            Type::BOOL,
            Type::INT8,
            Type::BYTEA,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        for r in rows {
            let created = r.created_position as i64;
            let state = r.state.as_slice();
            writer
                .as_mut()
                .write(&[
                    &r.id,
                    &r.source_connection_id,
                    &r.organization_id,
                    &r.active,
                    &created,
                    &state,
                ])
                .await?;
        }
        writer.finish().await?;
        Ok(())
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, ReadError> {
        let stmt = self.client.prepare_cached(sql).await?;
        Ok(self.client.execute(&stmt, params).await?)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, ReadError> {
        let stmt = self.client.prepare_cached(sql).await?;
        Ok(self.client.query_opt(&stmt, params).await?)
    }
}

fn table(t: Table) -> &'static str {
    match t {
        Table::Collections => "read_collections",
        Table::SourceConnections => "read_source_connections",
        Table::WebhookSubscriptions => "read_webhook_subscriptions",
    }
}

impl Rows for PgRows<'_> {
    async fn has_row(&self, t: Table, id: Uuid) -> Result<bool, ReadError> {
        let sql = format!("SELECT 1 FROM {} WHERE id = $1", table(t));
        Ok(self.query_opt(&sql, &[&id]).await?.is_some())
    }

    async fn remove_row(&self, t: Table, id: Uuid) -> Result<Option<Uuid>, ReadError> {
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 RETURNING organization_id",
            table(t)
        );
        Ok(self.query_opt(&sql, &[&id]).await?.map(|r| r.get(0)))
    }

    async fn add_counts(&self, deltas: &[(Uuid, OrgCounts)]) -> Result<(), ReadError> {
        self.run(add_counts(deltas)).await?;
        Ok(())
    }

    async fn connection_organizations(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, ReadError> {
        let stmt = self
            .client
            .prepare_cached(
                "SELECT id, organization_id FROM read_source_connections WHERE id = ANY($1)",
            )
            .await?;
        let rows = self.client.query(&stmt, &[&ids]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn count_runs(&self, runs: &[(Uuid, RunCounts)]) -> Result<(), ReadError> {
        self.run(count_runs(runs)).await?;
        Ok(())
    }

    async fn stored_job(&self, id: Uuid) -> Result<Option<JobState>, ReadError> {
        self.query_opt("SELECT state FROM read_jobs WHERE id = $1", &[&id])
            .await?
            .map(|r| decode_job(r.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn stored_jobs(&self, ids: &[Uuid]) -> Result<Vec<LiveJob>, ReadError> {
        let stmt = self
            .client
            .prepare_cached("SELECT state, created_position FROM read_jobs WHERE id = ANY($1)")
            .await?;
        let rows = self.client.query(&stmt, &[&ids]).await?;
        rows.iter()
            .map(|r| {
                Ok(LiveJob {
                    state: decode_job(r.get::<_, &[u8]>(0))?,
                    created_position: r.get::<_, i64>(1) as u64,
                    stored: true,
                })
            })
            .collect()
    }

    async fn active_jobs_of(&self, source_connection_id: Uuid) -> Result<i64, ReadError> {
        let row = self
            .query_opt(
                "SELECT COUNT(*) FROM read_jobs WHERE source_connection_id = $1 AND active",
                &[&source_connection_id],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    async fn delete_job(&self, id: Uuid) -> Result<(), ReadError> {
        self.execute("DELETE FROM read_jobs WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// One statement for the whole batch: a round trip per job would cost more than the
    /// fold itself. Many new rows (a first start, a backlog) go in by `COPY`, which skips
    /// the upsert's conflict checks: the upsert took 1.5-2 s of a first start on 100k jobs.
    async fn write_jobs(&self, rows: &[JobRow]) -> Result<(), ReadError> {
        let upserts = self.copy_new_jobs(rows).await?;
        if !upserts.is_empty() {
            self.run(upsert_jobs(&upserts)).await?;
        }
        Ok(())
    }

    async fn enqueue_purge(&self, source_connection_id: Uuid) -> Result<(), ReadError> {
        self.execute(
            "INSERT INTO read_purge_queue (source_connection_id) VALUES ($1)
             ON CONFLICT DO NOTHING",
            &[&source_connection_id],
        )
        .await?;
        Ok(())
    }

    async fn insert_collection(&self, c: &Collection) -> Result<(), ReadError> {
        self.send(
            "INSERT INTO read_collections (id, organization_id, name, readable_id,
               created_at, modified_at, created_position)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![
                Box::new(c.id),
                Box::new(c.organization_id),
                Box::new(c.name.as_bytes().to_vec()),
                Box::new(c.readable_id.as_bytes().to_vec()),
                Box::new(t(&c.created_at)),
                Box::new(t(&c.modified_at)),
                Box::new(c.created_position as i64),
            ],
        )
        .await
    }

    async fn rename_collection(&self, id: Uuid, name: &str, at: &str) -> Result<(), ReadError> {
        self.execute(
            "UPDATE read_collections SET name = $2, modified_at = $3 WHERE id = $1",
            &[&id, &name.as_bytes(), &at],
        )
        .await?;
        Ok(())
    }

    async fn insert_source_connection(&self, sc: &SourceConnection) -> Result<(), ReadError> {
        self.send(
            "INSERT INTO read_source_connections (id, organization_id, collection_id,
               readable_collection_id, name, description, short_name, config,
               auth_method, authenticated, created_at, modified_at, created_position,
               total_runs, successful_runs, failed_runs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            vec![
                Box::new(sc.id),
                Box::new(sc.organization_id),
                Box::new(sc.collection_id),
                Box::new(sc.readable_collection_id.as_bytes().to_vec()),
                Box::new(sc.name.as_bytes().to_vec()),
                Box::new(sc.description.as_ref().map(|d| d.as_bytes().to_vec())),
                Box::new(sc.short_name.as_bytes().to_vec()),
                Box::new(sc.config.to_string()),
                Box::new(sc.auth_method.as_bytes().to_vec()),
                Box::new(sc.authenticated),
                Box::new(t(&sc.created_at)),
                Box::new(t(&sc.modified_at)),
                Box::new(sc.created_position as i64),
                Box::new(sc.total_runs as i64),
                Box::new(sc.successful_runs as i64),
                Box::new(sc.failed_runs as i64),
            ],
        )
        .await
    }

    async fn insert_organization(&self, o: &Organization, position: u64) -> Result<(), ReadError> {
        self.execute(
            "INSERT INTO read_organizations (id, name, created_at, created_position)
             VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            &[
                &o.id,
                &o.name.as_bytes(),
                &t(&o.created_at),
                &(position as i64),
            ],
        )
        .await?;
        Ok(())
    }

    async fn insert_api_key(&self, k: &ApiKey, position: u64) -> Result<(), ReadError> {
        self.execute(
            "INSERT INTO read_api_keys (key_id, organization_id, key_hash, prefix,
               created_at, expires_at, revoked_at, created_position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key_id) DO NOTHING",
            &[
                &k.key_id,
                &k.organization_id,
                &k.key_hash.as_bytes(),
                &k.prefix.as_bytes(),
                &t(&k.created_at),
                &k.expires_at.as_ref().map(t),
                &k.revoked_at.as_ref().map(t),
                &(position as i64),
            ],
        )
        .await?;
        Ok(())
    }

    async fn revoke_api_key(&self, key_id: Uuid, at: &str) -> Result<(), ReadError> {
        self.execute(
            "UPDATE read_api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
            &[&key_id, &at],
        )
        .await?;
        Ok(())
    }

    async fn webhook_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<WebhookSubscription>, ReadError> {
        let sql = format!(
            "SELECT {} FROM read_webhook_subscriptions WHERE id = $1",
            super::view::WEBHOOK_SUBSCRIPTION_COLUMNS
        );
        self.query_opt(&sql, &[&id])
            .await?
            .map(|r| super::view::webhook_subscription_row(&r))
            .transpose()
    }

    async fn write_webhook_subscription(&self, s: &WebhookSubscription) -> Result<(), ReadError> {
        let types =
            serde_json::to_string(&s.event_types).map_err(|e| ReadError::Decode(e.to_string()))?;
        self.execute(
            "INSERT INTO read_webhook_subscriptions (id, organization_id, url, event_types,
               disabled, description, secret, created_at, updated_at, created_position,
               disabled_reason, failing_since)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET url = excluded.url,
               event_types = excluded.event_types, disabled = excluded.disabled,
               description = excluded.description, secret = excluded.secret,
               updated_at = excluded.updated_at, disabled_reason = excluded.disabled_reason,
               failing_since = excluded.failing_since",
            &[
                &s.id,
                &s.organization_id,
                &s.url.as_bytes(),
                &types,
                &s.disabled,
                &s.description.as_deref().map(str::as_bytes),
                &s.secret.as_bytes(),
                &t(&s.created_at),
                &t(&s.updated_at),
                &(s.created_position as i64),
                &s.disabled_reason.as_deref().map(str::as_bytes),
                &s.failing_since.as_ref().map(t),
            ],
        )
        .await?;
        Ok(())
    }

    async fn cancel_webhook_deliveries(&self, subscription_id: Uuid) -> Result<(), ReadError> {
        self.execute(
            "UPDATE read_webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL
             WHERE subscription_id = $1 AND status = 'pending'",
            &[&subscription_id],
        )
        .await?;
        Ok(())
    }

    async fn source_connection_row(&self, id: Uuid) -> Result<Option<SourceConnection>, ReadError> {
        let sql = format!(
            "SELECT {} FROM read_source_connections WHERE id = $1",
            super::view::SOURCE_CONNECTION_COLUMNS
        );
        self.query_opt(&sql, &[&id])
            .await?
            .map(|r| super::view::source_connection_row(&r))
            .transpose()
    }

    async fn collection_row(&self, id: Uuid) -> Result<Option<Collection>, ReadError> {
        let sql = format!(
            "SELECT {} FROM read_collections WHERE id = $1",
            super::view::COLLECTION_COLUMNS
        );
        self.query_opt(&sql, &[&id])
            .await?
            .map(|r| super::view::collection_row(&r))
            .transpose()
    }

    async fn webhook_subscriptions_of(
        &self,
        organization_ids: &[Uuid],
    ) -> Result<Vec<WebhookSubscription>, ReadError> {
        let sql = format!(
            "SELECT {} FROM read_webhook_subscriptions WHERE organization_id = ANY($1)",
            super::view::WEBHOOK_SUBSCRIPTION_COLUMNS
        );
        let stmt = self.client.prepare_cached(&sql).await?;
        self.client
            .query(&stmt, &[&organization_ids])
            .await?
            .iter()
            .map(super::view::webhook_subscription_row)
            .collect()
    }

    /// One statement for the whole batch, as the job rows: a round trip per message (one
    /// per lifecycle event) would cost more than the fold of the event.
    async fn insert_webhook_messages(&self, messages: &[NewMessage]) -> Result<(), ReadError> {
        self.run(insert_messages(messages)).await?;
        Ok(())
    }

    async fn insert_webhook_deliveries(&self, deliveries: &[NewDelivery]) -> Result<(), ReadError> {
        self.run(insert_deliveries(deliveries)).await?;
        Ok(())
    }

    async fn deliver_past_messages(
        &self,
        s: &WebhookSubscription,
        since: &str,
        due: &str,
    ) -> Result<(), ReadError> {
        let types: Vec<&[u8]> = s.event_types.iter().map(|t| t.as_bytes()).collect();
        let made = self
            .execute(
                "INSERT INTO read_webhook_deliveries (message_id, subscription_id,
                   organization_id, status, attempts, round_start, next_attempt_at,
                   created_position)
                 SELECT m.id, $1::uuid, m.organization_id, 'pending', 0, 0, $5::text,
                   m.created_position
                 FROM read_webhook_messages m
                 WHERE m.organization_id = $2 AND m.timestamp >= $3 AND m.event_type = ANY($4)
                 ORDER BY m.created_position
                 ON CONFLICT DO NOTHING",
                &[&s.id, &s.organization_id, &since, &types, &due],
            )
            .await?;
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
            .execute(
                "INSERT INTO read_webhook_attempts (id, message_id, subscription_id,
                   organization_id, attempt, url, status_code, response, timestamp,
                   created_position)
                 SELECT $1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::bigint, $6::bytea, $7::bigint,
                   $8::bytea, $9::text, $10::bigint
                 WHERE EXISTS (SELECT 1 FROM read_webhook_messages WHERE id = $2)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &a.id,
                    &a.message_id,
                    &a.subscription_id,
                    &a.organization_id,
                    &i64::from(a.attempt),
                    &a.url.as_bytes(),
                    &i64::from(a.status_code),
                    &a.response.as_bytes(),
                    &t(&a.timestamp),
                    &(position as i64),
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(());
        }
        self.execute(
            "UPDATE read_webhook_deliveries SET status = $3, attempts = $4, next_attempt_at = $5
             WHERE message_id = $1 AND subscription_id = $2 AND status <> 'cancelled'",
            &[
                &a.message_id,
                &a.subscription_id,
                &status,
                &i64::from(a.attempt),
                &next_attempt_at,
            ],
        )
        .await?;
        self.execute(
            "UPDATE read_webhook_subscriptions SET failing_since =
               CASE WHEN $2::boolean THEN NULL ELSE coalesce(failing_since, $3) END
             WHERE id = $1",
            &[
                &a.subscription_id,
                &(200..300).contains(&a.status_code),
                &t(&a.timestamp),
            ],
        )
        .await?;
        Ok(())
    }

    async fn recover_webhook_delivery(
        &self,
        message_id: Uuid,
        subscription_id: Uuid,
        due: &str,
    ) -> Result<(), ReadError> {
        self.execute(
            "UPDATE read_webhook_deliveries SET status = 'pending', round_start = attempts,
               next_attempt_at = $3
             WHERE message_id = $1 AND subscription_id = $2 AND status = 'failed'",
            &[&message_id, &subscription_id, &due],
        )
        .await?;
        Ok(())
    }
}
