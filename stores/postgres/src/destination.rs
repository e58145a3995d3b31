//! [`PgDestination`]: the destination (where syncs write entities) in PostgreSQL, used when
//! the event store is PostgreSQL, so that every node's workers write one shared set of
//! entities. Same semantics as the embedded [`SqliteDestination`]: insert a new id, update
//! a changed hash, keep an equal one; delete the unseen at the end of a completed run; each
//! job's counts committed with its writes. Tables: `migrations/0002_entities.sql`.
//!
//! # Concurrent writers: one upsert statement per write
//!
//! Several workers (of one run, of several runs, of several processes) may write the same
//! source connection, even the same entity id, at once. Each write is one statement
//! (`sql/entity_write.sql`), so one round trip and one implicit transaction: `INSERT ...
//! ON CONFLICT DO UPDATE ... WHERE hash differs`, fed by arrays (`unnest`), `RETURNING xmax
//! = 0` to tell an insert (a fresh tuple) from an update (the conflict path locks the row,
//! which leaves our transaction id in the new tuple's xmax); a record with no row back hit
//! an equal hash and was kept. The job's counts are inserted by the same statement.
//!
//! Why this and not "read the hashes, then write" in a transaction: between the read and the
//! write another writer can insert the same id, and the first would report an update as an
//! insert (counts no longer adding up to the rows) unless it locked ids it cannot lock
//! before they exist (advisory locks per id, or SERIALIZABLE and retries). The upsert is
//! atomic per row: a second writer of an id waits for the first's commit, then sees its row
//! and updates or keeps it. Both writers' counts then add up: one insert, and one update or
//! keep. The price is relying on `xmax`, which PostgreSQL does not document for this use
//! (though it is widely relied on); the contract checks
//! `a_write_reports_inserted_updated_and_kept_per_source_connection`,
//! `an_id_twice_in_one_write_is_written_as_if_one_after_the_other` (an update of a row the
//! same transaction inserted) and
//! `writers_of_the_same_ids_at_once_leave_one_row_each_and_counts_that_add_up` pin it down.
//!
//! Deadlocks: writers sort each write's records by id (byte order; the column is `COLLATE
//! "C"`), so two writers of overlapping ids take their row locks in one order. A deadlock
//! PostgreSQL still detects (a write against a delete scanning in another order) rolls the
//! statement back, and the write (or the delete batch) is retried. Ids that occur twice in one write are written
//! in rounds (each round's ids distinct, one statement each) in one transaction, as if the
//! records came one after the other.
//!
//! Counts are rows of `syncjobs_entity_writes`, one per write, summed when read: inserting
//! a row never waits, where one counter row per job would serialise its workers' commits.
//!
//! Deleting the unseen and purging go in bounded batches ([`DELETE_BATCH`] rows), each its
//! own transaction (with its counts), so no transaction holds locks for long on a big
//! connection. A write is durable when it returns (`synchronous_commit` as the server has
//! it, on by default).
//!
//! [`SqliteDestination`]: syncjobs_actors::pipeline::SqliteDestination

use crate::error::{connection_gone, describe, unavailable_cause};
use crate::migrate;
use crate::store::{
    build_pool, build_runtime, join_error, parse_config, runtime_handle, OwnRuntime, Timeouts,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool, PoolError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use syncjobs_actors::pipeline::{
    DestinationError, EntityRecord, EntitySink, EntityStats, TypeStats, WriteAction,
};
use syncjobs_domain::redact::{redact, redact_url};
use syncjobs_domain::{EntityCounts, StoreError};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

const WRITE: &str = include_str!("sql/entity_write.sql");
const DELETE: &str = include_str!("sql/entity_delete.sql");
const PAGE: &str = include_str!("sql/entity_page.sql");
const PURGE: &str = include_str!("sql/entity_purge.sql");
const STATS: &str = include_str!("sql/entity_stats.sql");
const JOB_COUNTS: &str = include_str!("sql/entity_job_counts.sql");

/// Connections the destination keeps (besides the event store's): writes are short, so a
/// few serve many workers.
const POOL_SIZE: usize = 8;
/// Most rows one delete transaction removes (delete-unseen and purge).
pub const DELETE_BATCH: i64 = 5_000;
/// Tries of a write that PostgreSQL rolled back for a deadlock or a serialisation failure.
const WRITE_TRIES: usize = 3;

/// The pause before try `tries + 1` of a rolled-back write: 5-10 ms, then 10-20 ms (jittered).
/// At once, the retry raced the transaction that won the deadlock for the row lock it had
/// just been given, and could close the same cycle again (and lose again: its backend checks
/// first), until the tries ran out.
fn retry_pause(tries: usize) -> std::time::Duration {
    let base = 5u64 << tries.saturating_sub(1).min(4);
    let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) * base / 255;
    std::time::Duration::from_millis(base + jitter)
}

/// The destination on PostgreSQL. Open with [`PgDestination::connect`] (async) or
/// [`PgDestination::open`] (blocking); it drives its connections on threads of its own, as
/// the event store does, so it works from actix's single-threaded arbiters.
pub struct PgDestination {
    pool: Pool,
    handle: tokio::runtime::Handle,
    // Last: dropped after everything that runs on it.
    _runtime: OwnRuntime,
}

impl std::fmt::Debug for PgDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDestination").finish_non_exhaustive()
    }
}

impl PgDestination {
    /// Connects to `url` and brings the schema up to date (the same migrations as the event
    /// store's, so either may come first).
    pub async fn connect(url: &str) -> Result<Arc<PgDestination>, DestinationError> {
        let runtime = OwnRuntime(Some(build_runtime().map_err(|e| open_error(url, &e))?));
        let handle = runtime_handle(&runtime).map_err(|e| open_error(url, &e))?;
        let pool = handle
            .spawn(start(url.to_owned()))
            .await
            .map_err(join_error)
            .and_then(|started| started)
            .map_err(|e| open_error(url, &e))?;
        Ok(Arc::new(PgDestination {
            pool,
            handle,
            _runtime: runtime,
        }))
    }

    /// [`PgDestination::connect`] for callers that may block (start-up).
    pub fn open(url: &str) -> Result<Arc<PgDestination>, DestinationError> {
        let runtime = OwnRuntime(Some(build_runtime().map_err(|e| open_error(url, &e))?));
        let handle = runtime_handle(&runtime).map_err(|e| open_error(url, &e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let owned = url.to_owned();
        handle.spawn(async move {
            let _ = tx.send(start(owned).await);
        });
        let pool = rx
            .recv()
            .map_err(|_| StoreError::Closed)
            .and_then(|started| started)
            .map_err(|e| open_error(url, &e))?;
        Ok(Arc::new(PgDestination {
            pool,
            handle,
            _runtime: runtime,
        }))
    }

    /// Runs `f` on the destination's runtime, where its connections live.
    async fn on_runtime<T, F>(&self, f: F) -> Result<T, DestinationError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, DestinationError>> + Send + 'static,
    {
        self.handle.spawn(f).await.map_err(|e| {
            if e.is_cancelled() {
                DestinationError::Closed
            } else {
                DestinationError::Storage(format!("entity store task failed: {e}"))
            }
        })?
    }
}

fn open_error(url: &str, e: &StoreError) -> DestinationError {
    DestinationError::Connect {
        url: redact_url(url).into_owned(),
        message: e.to_string(),
    }
}

/// On the destination's runtime: the pool and the schema.
async fn start(url: String) -> Result<Pool, StoreError> {
    // The store's bounds on connecting and waiting; no bound on one statement, since a
    // batch of thousands of rows may rightly take long (a dead peer is still noticed by
    // the keepalives and send timeout every connection has).
    let timeouts = Timeouts::default();
    let config = parse_config(&url, &timeouts)?;
    let pool = build_pool(&config, POOL_SIZE, &timeouts)?;
    let mut client = pool.get().await.map_err(|e| crate::error::pool_error(&e))?;
    migrate::migrate(&mut client).await?;
    drop(client);
    Ok(pool)
}

/// A PostgreSQL error while doing `what`: the fixed cause when the database is away (as the
/// event store reports it), else PostgreSQL's message (which names a failing constraint or
/// trigger).
fn pg_error(what: &str, e: &tokio_postgres::Error) -> DestinationError {
    let detail = match unavailable_cause(e) {
        Some(cause) => {
            tracing::warn!(error = %redact(&describe(e)), cause, "entity store unavailable");
            cause.to_owned()
        }
        None => redact(&describe(e)).into_owned(),
    };
    DestinationError::Storage(format!("{what}: {detail}"))
}

fn pool_error(what: &str, e: &PoolError) -> DestinationError {
    match e {
        PoolError::Backend(e) => pg_error(what, e),
        PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => DestinationError::Storage(
            format!("{what}: no database connection became free in time"),
        ),
        PoolError::Timeout(_) => {
            DestinationError::Storage(format!("{what}: the database is unreachable"))
        }
        PoolError::Closed => DestinationError::Closed,
        other => DestinationError::Storage(format!("{what}: {}", redact(&other.to_string()))),
    }
}

async fn connection(pool: &Pool, what: &str) -> Result<Object, DestinationError> {
    pool.get().await.map_err(|e| pool_error(what, &e))
}

/// Whether PostgreSQL rolled the statement back for a reason a retry can cure.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Runs one autocommit statement, again when PostgreSQL rolled it back for a deadlock or a
/// serialisation failure (nothing of it was written, so a retry is safe).
async fn retried<T, F, Fut>(mut statement: F) -> Result<T, tokio_postgres::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match statement().await {
            Err(e) if retryable(&e) && tries < WRITE_TRIES => {
                tracing::debug!(error = %e, "entity statement rolled back; retrying");
                tokio::time::sleep(retry_pause(tries)).await;
            }
            result => return result,
        }
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A read on a connection the server has closed is made again on the next one; the pool's
/// size bounds the tries. Reads only: a write whose connection broke may have committed.
async fn read<T>(
    pool: &Pool,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    decode: impl Fn(&[tokio_postgres::Row]) -> Result<T, tokio_postgres::Error>,
) -> Result<T, DestinationError> {
    let mut tries = 0;
    loop {
        let client = connection(pool, what).await?;
        let rows = match client.prepare_cached(sql).await {
            Ok(statement) => client.query(&statement, params).await,
            Err(e) => Err(e),
        };
        match rows.and_then(|rows| decode(&rows)) {
            Err(e) if connection_gone(&e) && tries < POOL_SIZE => tries += 1,
            result => return result.map_err(|e| pg_error(what, &e)),
        }
    }
}

/// The records of one write split into rounds of distinct ids (an id's n-th occurrence goes
/// in round n), each round's indices sorted by id: the lock order every writer follows.
fn rounds(records: &[EntityRecord]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    let mut rounds: Vec<Vec<usize>> = vec![Vec::with_capacity(records.len())];
    for (i, r) in records.iter().enumerate() {
        let n = seen.entry(r.entity_id.as_str()).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(i);
        *n += 1;
    }
    for round in &mut rounds {
        round.sort_unstable_by(|&a, &b| records[a].entity_id.cmp(&records[b].entity_id));
    }
    rounds
}

/// One round's statement on `client`, setting the actions of the records it wrote.
async fn write_round(
    client: &impl deadpool_postgres::GenericClient,
    statement: &tokio_postgres::Statement,
    (scid, job_id, failed): (Uuid, Uuid, i64),
    records: &[EntityRecord],
    round: &[usize],
    actions: &mut [WriteAction],
) -> Result<(), tokio_postgres::Error> {
    let column = |f: fn(&EntityRecord) -> &str| -> Vec<&str> {
        round.iter().map(|&i| f(&records[i])).collect()
    };
    let ids = column(|r| &r.entity_id);
    let types = column(|r| &r.entity_type);
    let hashes = column(|r| &r.hash);
    let contents = column(|r| &r.content);
    let rows = client
        .query(
            statement,
            &[&scid, &job_id, &ids, &types, &hashes, &contents, &failed],
        )
        .await?;
    for row in rows {
        let ord: i64 = row.try_get(0)?;
        let inserted: bool = row.try_get(1)?;
        let Some(&index) = usize::try_from(ord - 1).ok().and_then(|o| round.get(o)) else {
            continue;
        };
        actions[index] = if inserted {
            WriteAction::Inserted
        } else {
            WriteAction::Updated
        };
    }
    Ok(())
}

async fn write_records(
    pool: &Pool,
    scid: Uuid,
    job_id: Uuid,
    records: &[EntityRecord],
    failed: u64,
) -> Result<Vec<WriteAction>, DestinationError> {
    let what = format!(
        "writing {} entities of source connection {scid}",
        records.len()
    );
    let rounds = rounds(records);
    let failed = i64::try_from(failed).unwrap_or(i64::MAX);
    let mut tries = 0;
    loop {
        tries += 1;
        let mut client = connection(pool, &what).await?;
        // Kept unless a round's statement says otherwise.
        let mut actions = vec![WriteAction::Kept; records.len()];
        let result = async {
            let statement = client.prepare_cached(WRITE).await?;
            if let [round] = rounds.as_slice() {
                // The common case: one statement, its own transaction.
                let args = (scid, job_id, failed);
                return write_round(&client, &statement, args, records, round, &mut actions).await;
            }
            let tx = client.transaction().await?;
            for (n, round) in rounds.iter().enumerate() {
                let args = (scid, job_id, if n == 0 { failed } else { 0 });
                write_round(&tx, &statement, args, records, round, &mut actions).await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => return Ok(actions),
            Err(e) if retryable(&e) && tries < WRITE_TRIES => {
                tracing::debug!(%job_id, error = %e, "entity write rolled back; retrying");
                drop(client);
                tokio::time::sleep(retry_pause(tries)).await;
            }
            Err(e) => return Err(pg_error(&what, &e)),
        }
    }
}

async fn delete_unseen(
    pool: &Pool,
    scid: Uuid,
    job_id: Uuid,
    seen: &HashSet<String>,
) -> Result<u64, DestinationError> {
    let what = format!("deleting the unseen entities of source connection {scid}");
    let client = connection(pool, &what).await?;
    let fail = |e: tokio_postgres::Error| pg_error(&what, &e);
    let page = client.prepare_cached(PAGE).await.map_err(fail)?;
    let delete = client.prepare_cached(DELETE).await.map_err(fail)?;
    let mut after = String::new();
    let mut deleted = 0u64;
    // Walk the connection's ids in key order a page at a time; each page's unseen ids go in
    // one transaction with their counts.
    loop {
        let ids: Vec<String> = client
            .query(&page, &[&scid, &after, &DELETE_BATCH])
            .await
            .map_err(fail)?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let Some(last) = ids.last() else { break };
        let unseen: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !seen.contains(*id))
            .collect();
        if !unseen.is_empty() {
            let params: [&(dyn ToSql + Sync); 3] = [&scid, &job_id, &unseen];
            let row = retried(|| client.query_one(&delete, &params))
                .await
                .map_err(fail)?;
            deleted += count(row.try_get(0).map_err(fail)?);
        }
        if ids.len() < DELETE_BATCH as usize {
            break;
        }
        after.clone_from(last);
    }
    Ok(deleted)
}

async fn purge(pool: &Pool, scid: Uuid) -> Result<u64, DestinationError> {
    let what = format!("purging the entities of source connection {scid}");
    let client = connection(pool, &what).await?;
    let fail = |e: tokio_postgres::Error| pg_error(&what, &e);
    let purge = client.prepare_cached(PURGE).await.map_err(fail)?;
    let mut deleted = 0;
    loop {
        let params: [&(dyn ToSql + Sync); 2] = [&scid, &DELETE_BATCH];
        let n = retried(|| client.execute(&purge, &params))
            .await
            .map_err(fail)?;
        deleted += n;
        if n == 0 {
            return Ok(deleted);
        }
    }
}

#[async_trait]
impl EntitySink for PgDestination {
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
        let pool = self.pool.clone();
        self.on_runtime(async move {
            write_records(&pool, source_connection_id, job_id, &records, failed).await
        })
        .await
    }

    async fn delete_unseen(
        &self,
        source_connection_id: Uuid,
        job_id: Uuid,
        seen: HashSet<String>,
    ) -> Result<u64, DestinationError> {
        let pool = self.pool.clone();
        self.on_runtime(
            async move { delete_unseen(&pool, source_connection_id, job_id, &seen).await },
        )
        .await
    }

    async fn counts_for_job(&self, job_id: Uuid) -> Result<EntityCounts, DestinationError> {
        let pool = self.pool.clone();
        self.on_runtime(async move {
            let what = format!("reading the counts of job {job_id}");
            read(&pool, &what, JOB_COUNTS, &[&job_id], |rows| {
                let Some(row) = rows.first() else {
                    return Ok(EntityCounts::default());
                };
                let n = |i: usize| row.try_get::<_, i64>(i).map(count);
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
        })
        .await
    }

    async fn stats(&self, source_connection_id: Uuid) -> Result<EntityStats, DestinationError> {
        let pool = self.pool.clone();
        self.on_runtime(async move {
            let what =
                format!("reading the entity stats of source connection {source_connection_id}");
            read(&pool, &what, STATS, &[&source_connection_id], |rows| {
                let mut stats = EntityStats::default();
                for row in rows {
                    let entity_type: String = row.try_get(0)?;
                    let n = count(row.try_get(1)?);
                    let last: Option<DateTime<Utc>> = row.try_get(2)?;
                    stats.total_entities += n;
                    stats.by_type.insert(
                        entity_type,
                        TypeStats {
                            count: n,
                            last_updated: last,
                        },
                    );
                }
                Ok(stats)
            })
            .await
        })
        .await
    }

    async fn purge(&self, source_connection_id: Uuid) -> Result<u64, DestinationError> {
        let pool = self.pool.clone();
        self.on_runtime(async move { purge(&pool, source_connection_id).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> EntityRecord {
        EntityRecord {
            entity_id: id.into(),
            entity_type: "T".into(),
            hash: "h".into(),
            content: "{}".into(),
        }
    }

    #[test]
    fn repeated_ids_go_in_later_rounds_and_each_round_is_sorted_by_id() {
        let records: Vec<_> = ["b", "a", "b", "c", "b", "a"].map(record).into();
        assert_eq!(rounds(&records), vec![vec![1, 0, 3], vec![5, 2], vec![4]]);
        assert_eq!(rounds(&[]), vec![Vec::<usize>::new()]);
    }
}
