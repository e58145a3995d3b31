//! The PostgreSQL writer: one batch of the [`fold`](crate::db::fold) per transaction, under
//! the lock of the projection's row, with the new position.

use super::pool_error;
use crate::db::fold::{
    Committed, Fold, JobRow, LiveJob, OrgCounts, Rows, RunCounts, Table, PURGE_BATCH,
};
use crate::db::{decode_job, time as t, ReadError, PROJECTION_NAME};
use crate::model::{
    ApiKey, Collection, Organization, SourceConnection, WebhookAttempt, WebhookMessage,
    WebhookSubscription,
};
use deadpool_postgres::{Pool, Transaction};
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
        Ok(PgWriter {
            pool,
            fold: Fold {
                position,
                ..Fold::default()
            },
        })
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
                self.fold.live.clear();
                Err(e)
            }
        }
    }

    async fn try_batch(&mut self, events: Vec<RecordedEvent>) -> Result<Committed, ReadError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let stored = tx
            .query_one(
                "SELECT position FROM read_projection WHERE name = $1 FOR UPDATE",
                &[&PROJECTION_NAME],
            )
            .await?
            .get::<_, i64>(0) as u64;
        if stored != self.fold.position {
            // Another node folded meanwhile: the live jobs held here may be stale.
            tracing::debug!(
                stored,
                folded = self.fold.position,
                "the read model was moved by another node; following it"
            );
            self.fold.position = stored;
            self.fold.live.clear();
        }
        let committed = self.fold.apply(&PgRows(&tx), events).await?;
        if committed.position != stored {
            tx.execute(
                "UPDATE read_projection SET position = $2 WHERE name = $1",
                &[&PROJECTION_NAME, &(committed.position as i64)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(committed)
    }

    /// Removes up to [`PURGE_BATCH`] final jobs of a deleted source connection, in one
    /// transaction (one node at a time per connection). Returns whether there is more.
    pub async fn purge_step(&mut self) -> Result<bool, ReadError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let next = tx
            .query_opt(
                "SELECT source_connection_id FROM read_purge_queue LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await?;
        let Some(sc) = next.map(|r| r.get::<_, Uuid>(0)) else {
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

/// The fold's row operations on a PostgreSQL transaction (statements prepared once per
/// connection).
struct PgRows<'t>(&'t Transaction<'t>);

impl PgRows<'_> {
    /// Inserts new job rows, or updates the rows of known ones.
    async fn upsert_jobs(&self, rows: &[&JobRow]) -> Result<(), ReadError> {
        let ids: Vec<Uuid> = rows.iter().map(|j| j.id).collect();
        let scs: Vec<Uuid> = rows.iter().map(|j| j.source_connection_id).collect();
        let orgs: Vec<Uuid> = rows.iter().map(|j| j.organization_id).collect();
        let active: Vec<bool> = rows.iter().map(|j| j.active).collect();
        let created: Vec<i64> = rows.iter().map(|j| j.created_position as i64).collect();
        let states: Vec<&[u8]> = rows.iter().map(|j| j.state.as_slice()).collect();
        self.execute(
            "INSERT INTO read_jobs
               (id, source_connection_id, organization_id, active, created_position, state)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::boolean[],
                                  $5::bigint[], $6::bytea[])
             ON CONFLICT (id) DO UPDATE SET active = excluded.active, state = excluded.state",
            &[&ids, &scs, &orgs, &active, &created, &states],
        )
        .await?;
        Ok(())
    }

    /// Inserts job rows no row exists for yet, by a binary `COPY`.
    async fn copy_jobs(&self, rows: &[&JobRow]) -> Result<(), ReadError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;
        let sink = self
            .0
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
        let stmt = self.0.prepare_cached(sql).await?;
        Ok(self.0.execute(&stmt, params).await?)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, ReadError> {
        let stmt = self.0.prepare_cached(sql).await?;
        Ok(self.0.query_opt(&stmt, params).await?)
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
        let ids: Vec<Uuid> = deltas.iter().map(|(id, _)| *id).collect();
        let [collections, connections, active] =
            [0, 1, 2].map(|i| deltas.iter().map(|(_, d)| d[i]).collect::<Vec<i64>>());
        self.execute(
            "INSERT INTO read_organization_counts AS c
               (organization_id, collections, source_connections, active_jobs)
             SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (organization_id) DO UPDATE SET
               collections = c.collections + excluded.collections,
               source_connections = c.source_connections + excluded.source_connections,
               active_jobs = c.active_jobs + excluded.active_jobs",
            &[&ids, &collections, &connections, &active],
        )
        .await?;
        Ok(())
    }

    async fn connection_organizations(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Uuid)>, ReadError> {
        let stmt = self
            .0
            .prepare_cached(
                "SELECT id, organization_id FROM read_source_connections WHERE id = ANY($1)",
            )
            .await?;
        let rows = self.0.query(&stmt, &[&ids]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn count_runs(&self, runs: &[(Uuid, RunCounts)]) -> Result<(), ReadError> {
        let ids: Vec<Uuid> = runs.iter().map(|(id, _)| *id).collect();
        let [total, successful, failed] =
            [0, 1, 2].map(|i| runs.iter().map(|(_, r)| r[i]).collect::<Vec<i64>>());
        self.execute(
            "UPDATE read_source_connections s SET total_runs = s.total_runs + d.total,
               successful_runs = s.successful_runs + d.successful,
               failed_runs = s.failed_runs + d.failed
             FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
               AS d (id, total, successful, failed)
             WHERE s.id = d.id",
            &[&ids, &total, &successful, &failed],
        )
        .await?;
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
            .0
            .prepare_cached("SELECT state, created_position FROM read_jobs WHERE id = ANY($1)")
            .await?;
        let rows = self.0.query(&stmt, &[&ids]).await?;
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
        if rows.iter().filter(|r| r.new).count() < COPY_AT_LEAST {
            return self.upsert_jobs(&rows.iter().collect::<Vec<_>>()).await;
        }
        let (new, known): (Vec<&JobRow>, Vec<&JobRow>) = rows.iter().partition(|r| r.new);
        self.copy_jobs(&new).await?;
        if !known.is_empty() {
            self.upsert_jobs(&known).await?;
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
        self.execute(
            "INSERT INTO read_collections (id, organization_id, name, readable_id,
               created_at, modified_at, created_position)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &c.id,
                &c.organization_id,
                &c.name.as_bytes(),
                &c.readable_id.as_bytes(),
                &t(&c.created_at),
                &t(&c.modified_at),
                &(c.created_position as i64),
            ],
        )
        .await?;
        Ok(())
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
        let config = sc.config.to_string();
        self.execute(
            "INSERT INTO read_source_connections (id, organization_id, collection_id,
               readable_collection_id, name, description, short_name, config,
               auth_method, authenticated, created_at, modified_at, created_position,
               total_runs, successful_runs, failed_runs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            &[
                &sc.id,
                &sc.organization_id,
                &sc.collection_id,
                &sc.readable_collection_id.as_bytes(),
                &sc.name.as_bytes(),
                &sc.description.as_deref().map(str::as_bytes),
                &sc.short_name.as_bytes(),
                &config,
                &sc.auth_method.as_bytes(),
                &sc.authenticated,
                &t(&sc.created_at),
                &t(&sc.modified_at),
                &(sc.created_position as i64),
                &(sc.total_runs as i64),
                &(sc.successful_runs as i64),
                &(sc.failed_runs as i64),
            ],
        )
        .await?;
        Ok(())
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
               disabled, description, secret, created_at, updated_at, created_position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET url = excluded.url,
               event_types = excluded.event_types, disabled = excluded.disabled,
               description = excluded.description, secret = excluded.secret,
               updated_at = excluded.updated_at",
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
        let stmt = self.0.prepare_cached(&sql).await?;
        self.0
            .query(&stmt, &[&organization_ids])
            .await?
            .iter()
            .map(super::view::webhook_subscription_row)
            .collect()
    }

    async fn insert_webhook_message(&self, m: &WebhookMessage) -> Result<(), ReadError> {
        self.execute(
            "INSERT INTO read_webhook_messages (id, organization_id, event_type, payload,
               timestamp, created_position)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            &[
                &m.id,
                &m.organization_id,
                &m.event_type.as_bytes(),
                &m.payload.as_bytes(),
                &t(&m.timestamp),
                &(m.created_position as i64),
            ],
        )
        .await?;
        Ok(())
    }

    async fn insert_webhook_delivery(
        &self,
        m: &WebhookMessage,
        subscription_id: Uuid,
        due: &str,
    ) -> Result<(), ReadError> {
        self.execute(
            "INSERT INTO read_webhook_deliveries (message_id, subscription_id, organization_id,
               status, attempts, round_start, next_attempt_at, created_position)
             VALUES ($1, $2, $3, 'pending', 0, 0, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &m.id,
                &subscription_id,
                &m.organization_id,
                &due,
                &(m.created_position as i64),
            ],
        )
        .await?;
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
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
