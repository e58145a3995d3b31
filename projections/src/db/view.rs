//! The queries the API makes, each by an index, on a read-only connection.
//!
//! A job is readable while its source connection exists or while it is active: a deleted
//! connection's final jobs vanish from reads at once (their rows are purged later), its live
//! ones can still be found and cancelled until they end.

use super::pg::view as pg;
use super::{decode_job, organization_row, parse_time, ReadDb, ReadError};
use crate::model::{
    ApiKey, Collection, CollectionStatus, DueDelivery, ModelDump, Organization, SourceConnection,
    SourceConnectionStatus, WebhookAttempt, WebhookMessage, WebhookSubscription,
};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row};
use syncjobs_domain::{JobState, JobStatus};
use uuid::Uuid;

/// What `/health` shows for one organization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrganizationCounts {
    pub collections: u64,
    pub source_connections: u64,
    /// Active jobs of its existing source connections.
    pub active_jobs: u64,
}

/// Reads of the model at one moment (a pooled connection); cheap, short-lived.
pub struct ReadView<'a> {
    pub(crate) db: &'a ReadDb,
    pub(crate) conn: Conn<'a>,
    pub(crate) position: u64,
}

/// The engine a view reads: each query is SQLite's (synchronous, microseconds) or
/// PostgreSQL's (a round trip, awaited); the caches and the rules around them are shared.
pub(crate) enum Conn<'a> {
    Sqlite(&'a Connection),
    Postgres(&'a deadpool_postgres::ClientWrapper),
}

const JOB_VISIBLE: &str = "(j.active = 1 OR EXISTS
    (SELECT 1 FROM source_connections s WHERE s.id = j.source_connection_id))";

pub(crate) const COLLECTION_COLUMNS: &str =
    "id, organization_id, name, readable_id, created_at, modified_at, created_position";
pub(crate) const SOURCE_CONNECTION_COLUMNS: &str =
    "id, organization_id, collection_id, readable_collection_id,
    name, description, short_name, config, auth_method, authenticated, created_at, modified_at,
    created_position, total_runs, successful_runs, failed_runs";
const KEY_COLUMNS: &str =
    "key_id, organization_id, key_hash, prefix, created_at, expires_at, revoked_at";

fn optional_time(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    r.get::<_, Option<String>>(i)?
        .map(|s| parse_time(&s))
        .transpose()
}

fn key_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        key_id: r.get(0)?,
        organization_id: r.get(1)?,
        key_hash: r.get(2)?,
        prefix: r.get(3)?,
        created_at: parse_time(&r.get::<_, String>(4)?)?,
        expires_at: optional_time(r, 5)?,
        revoked_at: optional_time(r, 6)?,
    })
}

/// The key if it is usable at `now` and its organization exists.
pub(crate) fn usable(found: Option<(ApiKey, bool)>, now: DateTime<Utc>) -> Option<ApiKey> {
    found
        .filter(|(k, org)| *org && k.is_valid_at(now))
        .map(|(k, _)| k)
}

pub(crate) const WEBHOOK_SUBSCRIPTION_COLUMNS: &str = "id, organization_id, url, event_types,
    disabled, description, secret, created_at, updated_at, created_position, disabled_reason,
    failing_since";

pub(crate) fn webhook_subscription_row(r: &Row<'_>) -> rusqlite::Result<WebhookSubscription> {
    let types: String = r.get(3)?;
    Ok(WebhookSubscription {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        url: r.get(2)?,
        event_types: serde_json::from_str(&types).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
        })?,
        disabled: r.get(4)?,
        description: r.get(5)?,
        secret: r.get(6)?,
        created_at: parse_time(&r.get::<_, String>(7)?)?,
        updated_at: parse_time(&r.get::<_, String>(8)?)?,
        created_position: r.get::<_, i64>(9)? as u64,
        disabled_reason: r.get(10)?,
        failing_since: optional_time(r, 11)?,
    })
}

const MESSAGE_COLUMNS: &str =
    "id, organization_id, event_type, payload, timestamp, created_position";
const ATTEMPT_COLUMNS: &str = "id, message_id, subscription_id, organization_id, attempt, url,
    status_code, response, timestamp";

fn message_row(r: &Row<'_>) -> rusqlite::Result<WebhookMessage> {
    let organization_id = r.get(1)?;
    let event_type: String = r.get(2)?;
    let timestamp = parse_time(&r.get::<_, String>(4)?)?;
    let payload = stored_payload(r, 3, &event_type, organization_id, &timestamp)?;
    Ok(WebhookMessage {
        id: r.get(0)?,
        organization_id,
        event_type,
        payload,
        timestamp,
        created_position: r.get::<_, i64>(5)? as u64,
    })
}

/// The JSON of the stored payload in column `i` (see `fold::render_payload`).
fn stored_payload(
    r: &Row<'_>,
    i: usize,
    event_type: &str,
    organization_id: Uuid,
    timestamp: &DateTime<Utc>,
) -> rusqlite::Result<String> {
    let stored = r.get_ref(i)?.as_bytes().map_err(rusqlite::Error::from)?;
    super::fold::render_payload(event_type, organization_id, timestamp, stored).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn attempt_row(r: &Row<'_>) -> rusqlite::Result<WebhookAttempt> {
    Ok(WebhookAttempt {
        id: r.get(0)?,
        message_id: r.get(1)?,
        subscription_id: r.get(2)?,
        organization_id: r.get(3)?,
        attempt: r.get(4)?,
        url: r.get(5)?,
        status_code: r.get(6)?,
        response: r.get(7)?,
        timestamp: parse_time(&r.get::<_, String>(8)?)?,
    })
}

pub(crate) fn collection_row(r: &Row<'_>) -> rusqlite::Result<Collection> {
    Ok(Collection {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        name: r.get(2)?,
        readable_id: r.get(3)?,
        created_at: parse_time(&r.get::<_, String>(4)?)?,
        modified_at: parse_time(&r.get::<_, String>(5)?)?,
        created_position: r.get::<_, i64>(6)? as u64,
    })
}

pub(crate) fn source_connection_row(r: &Row<'_>) -> rusqlite::Result<SourceConnection> {
    Ok(SourceConnection {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        collection_id: r.get(2)?,
        readable_collection_id: r.get(3)?,
        name: r.get(4)?,
        description: r.get(5)?,
        short_name: r.get(6)?,
        config: r.get(7)?,
        auth_method: r.get(8)?,
        authenticated: r.get(9)?,
        created_at: parse_time(&r.get::<_, String>(10)?)?,
        modified_at: parse_time(&r.get::<_, String>(11)?)?,
        created_position: r.get::<_, i64>(12)? as u64,
        total_runs: r.get::<_, i64>(13)? as u64,
        successful_runs: r.get::<_, i64>(14)? as u64,
        failed_runs: r.get::<_, i64>(15)? as u64,
    })
}

fn one<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, ReadError> {
    Ok(c.prepare_cached(sql)?.query_row(params, row).optional()?)
}

/// Rows of `sql` in order, `skip`ped and at most `limit` of those `keep` accepts.
fn page<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
    skip: usize,
    limit: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<Vec<T>, ReadError> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let (mut skipped, mut out) = (0, Vec::new());
    while out.len() < limit {
        let Some(r) = rows.next()? else { break };
        let item = row(r)?;
        if !keep(&item) {
            continue;
        }
        if skipped < skip {
            skipped += 1;
            continue;
        }
        out.push(item);
    }
    Ok(out)
}

/// Every row of `sql`, in order.
fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, ReadError> {
    page(c, sql, params, row, 0, usize::MAX, |_| true)
}

impl ReadView<'_> {
    /// The global position of the last event folded in (committed and published).
    pub fn position(&self) -> u64 {
        self.position
    }

    // ---- access -----------------------------------------------------------------------

    /// The newest key with this hash, and whether its organization exists (cached).
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<(ApiKey, bool)>, ReadError> {
        let generation = match self.db.keys.get(key_hash) {
            Ok(found) => return Ok(found),
            Err(generation) => generation,
        };
        let found = match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!(
                    "SELECT {KEY_COLUMNS}, EXISTS (SELECT 1 FROM organizations o WHERE o.id = k.organization_id)
                     FROM api_keys k WHERE key_hash = ?1 ORDER BY created_position DESC LIMIT 1"
                ),
                [key_hash],
                |r| Ok((key_row(r)?, r.get::<_, bool>(7)?)),
            )?,
            Conn::Postgres(c) => pg::key_by_hash(c, key_hash).await?,
        };
        self.db
            .keys
            .fill(generation, key_hash.to_owned(), found.clone());
        Ok(found)
    }

    /// The key with this SHA-256 hash, if it exists, is usable at `now` and its organization exists.
    pub async fn authenticate(
        &self,
        key_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, ReadError> {
        Ok(usable(self.key_by_hash(key_hash).await?, now))
    }

    pub async fn api_key(&self, key_id: Uuid) -> Result<Option<ApiKey>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?1"),
                [key_id],
                key_row,
            ),
            Conn::Postgres(c) => pg::api_key(c, key_id).await,
        }
    }

    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, ReadError> {
        Ok(self.key_by_hash(key_hash).await?.map(|(k, _)| k))
    }

    /// Every key, oldest first (for `syncjobs keys list`).
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => all(
                c,
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id"),
                [],
                key_row,
            ),
            Conn::Postgres(c) => pg::api_keys(c).await,
        }
    }

    pub async fn organization(&self, id: Uuid) -> Result<Option<Organization>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                "SELECT id, name, created_at FROM organizations WHERE id = ?1",
                [id],
                organization_row,
            ),
            Conn::Postgres(c) => pg::organization(c, id).await,
        }
    }

    pub async fn organization_by_name(
        &self,
        name: &str,
    ) -> Result<Option<Organization>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                "SELECT id, name, created_at FROM organizations WHERE name = ?1
                 ORDER BY created_position DESC LIMIT 1",
                [name],
                organization_row,
            ),
            Conn::Postgres(c) => pg::organization_by_name(c, name).await,
        }
    }

    // ---- webhook subscriptions ----------------------------------------------------------

    /// An organization's webhook subscriptions, newest first.
    pub async fn webhook_subscriptions(
        &self,
        organization_id: Uuid,
    ) -> Result<Vec<WebhookSubscription>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => all(
                c,
                &format!(
                    "SELECT {WEBHOOK_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions
                     WHERE organization_id = ?1 ORDER BY created_position DESC"
                ),
                [organization_id],
                webhook_subscription_row,
            ),
            Conn::Postgres(c) => pg::webhook_subscriptions(c, organization_id).await,
        }
    }

    /// The organization's subscription with this id (another organization's is None).
    pub async fn webhook_subscription(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<WebhookSubscription>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!(
                    "SELECT {WEBHOOK_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions
                     WHERE id = ?1 AND organization_id = ?2"
                ),
                rusqlite::params![id, organization_id],
                webhook_subscription_row,
            ),
            Conn::Postgres(c) => pg::webhook_subscription(c, organization_id, id).await,
        }
    }

    /// The next due delivery (at `now`) of each enabled subscription, oldest due first, at
    /// most `limit`: one per subscription, so that a subscription with a backlog never hides
    /// the others' deliveries from the dispatcher.
    pub async fn due_webhook_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, ReadError> {
        let now = super::time(&now);
        match self.conn {
            Conn::Sqlite(c) => page(
                c,
                "SELECT d.message_id, d.subscription_id, d.organization_id, d.attempts,
                   d.next_attempt_at, s.url, s.secret, m.payload, d.round_start, s.failing_since,
                   m.event_type, m.timestamp
                 FROM webhook_subscriptions s
                 JOIN webhook_deliveries d ON d.rowid = (
                   SELECT x.rowid FROM webhook_deliveries x
                   WHERE x.subscription_id = s.id AND x.status = 'pending'
                     AND x.next_attempt_at <= ?1
                   ORDER BY x.next_attempt_at, x.created_position LIMIT 1)
                 JOIN webhook_messages m ON m.id = d.message_id
                 WHERE s.disabled = 0
                 ORDER BY d.next_attempt_at, d.created_position LIMIT ?2",
                rusqlite::params![now, limit as i64],
                |r| {
                    let organization_id = r.get(2)?;
                    let event_type: String = r.get(10)?;
                    let at = parse_time(&r.get::<_, String>(11)?)?;
                    Ok(DueDelivery {
                        message_id: r.get(0)?,
                        subscription_id: r.get(1)?,
                        organization_id,
                        attempts: r.get(3)?,
                        next_attempt_at: parse_time(&r.get::<_, String>(4)?)?,
                        url: r.get(5)?,
                        secret: r.get(6)?,
                        payload: stored_payload(r, 7, &event_type, organization_id, &at)?,
                        round_start: r.get(8)?,
                        failing_since: optional_time(r, 9)?,
                    })
                },
                0,
                limit,
                |_| true,
            ),
            Conn::Postgres(c) => pg::due_webhook_deliveries(c, &now, limit).await,
        }
    }

    /// The ids of a subscription's failed deliveries' messages recorded in `[since, until)`,
    /// oldest first.
    pub async fn failed_webhook_deliveries(
        &self,
        subscription_id: Uuid,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<Uuid>, ReadError> {
        let since = super::time(&since);
        // Past any stored time: nine fractional digits sort before a `Z` after the seconds.
        let until = until.map_or_else(|| "9999".to_owned(), |t| super::time(&t));
        match self.conn {
            Conn::Sqlite(c) => all(
                c,
                "SELECT d.message_id FROM webhook_deliveries d
                 JOIN webhook_messages m ON m.id = d.message_id
                 WHERE d.subscription_id = ?1 AND d.status = 'failed'
                   AND m.timestamp >= ?2 AND m.timestamp < ?3
                 ORDER BY d.created_position",
                rusqlite::params![subscription_id, since, until],
                |r| r.get(0),
            ),
            Conn::Postgres(c) => {
                pg::failed_webhook_deliveries(c, subscription_id, &since, &until).await
            }
        }
    }

    /// An organization's messages, newest first, of the given types (all when empty).
    pub async fn webhook_messages(
        &self,
        organization_id: Uuid,
        event_types: &[String],
        limit: usize,
    ) -> Result<Vec<WebhookMessage>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => {
                // The filter in the statement: every lifecycle event is a message, so a
                // rare type may be far back among the organization's messages.
                let types = serde_json::to_string(event_types)
                    .map_err(|e| ReadError::Decode(e.to_string()))?;
                page(
                    c,
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM webhook_messages WHERE organization_id = ?1
                           AND (?2 = '[]' OR event_type IN (SELECT value FROM json_each(?2)))
                         ORDER BY created_position DESC"
                    ),
                    rusqlite::params![organization_id, types],
                    message_row,
                    0,
                    limit,
                    |_| true,
                )
            }
            Conn::Postgres(c) => pg::webhook_messages(c, organization_id, event_types, limit).await,
        }
    }

    pub async fn webhook_message(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<WebhookMessage>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM webhook_messages
                     WHERE id = ?1 AND organization_id = ?2"
                ),
                rusqlite::params![id, organization_id],
                message_row,
            ),
            Conn::Postgres(c) => pg::webhook_message(c, organization_id, id).await,
        }
    }

    /// The attempts of one message (`by_message`) or of one subscription, newest first,
    /// at most `limit`.
    pub async fn webhook_attempts(
        &self,
        id: Uuid,
        by_message: bool,
        limit: usize,
    ) -> Result<Vec<WebhookAttempt>, ReadError> {
        let column = if by_message {
            "message_id"
        } else {
            "subscription_id"
        };
        match self.conn {
            Conn::Sqlite(c) => page(
                c,
                &format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE {column} = ?1
                     ORDER BY created_position DESC"
                ),
                [id],
                attempt_row,
                0,
                limit,
                |_| true,
            ),
            Conn::Postgres(c) => pg::webhook_attempts(c, column, id, limit).await,
        }
    }

    // ---- collections --------------------------------------------------------------------

    pub async fn collection(
        &self,
        organization_id: Uuid,
        readable_id: &str,
    ) -> Result<Option<Collection>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!(
                    "SELECT {COLLECTION_COLUMNS} FROM collections
                     WHERE organization_id = ?1 AND readable_id = ?2
                     ORDER BY created_position DESC LIMIT 1"
                ),
                rusqlite::params![organization_id, readable_id],
                collection_row,
            ),
            Conn::Postgres(c) => pg::collection(c, organization_id, readable_id).await,
        }
    }

    pub async fn collection_by_id(&self, id: Uuid) -> Result<Option<Collection>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE id = ?1"),
                [id],
                collection_row,
            ),
            Conn::Postgres(c) => pg::collection_by_id(c, id).await,
        }
    }

    /// An organization's collections, newest first: `skip` then at most `limit` of those
    /// `keep` accepts.
    pub async fn collections(
        &self,
        organization_id: Uuid,
        skip: usize,
        limit: usize,
        keep: impl FnMut(&Collection) -> bool,
    ) -> Result<Vec<Collection>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => page(
                c,
                &format!(
                    "SELECT {COLLECTION_COLUMNS} FROM collections WHERE organization_id = ?1
                     ORDER BY created_position DESC"
                ),
                [organization_id],
                collection_row,
                skip,
                limit,
                keep,
            ),
            Conn::Postgres(c) => pg::collections(c, organization_id, skip, limit, keep).await,
        }
    }

    /// Airweave's rule: no authenticated connection -> NEEDS SOURCE; any connection whose
    /// last job completed or is running -> ACTIVE; all failed -> ERROR; else NEEDS SOURCE.
    pub async fn collection_status(
        &self,
        collection_id: Uuid,
    ) -> Result<CollectionStatus, ReadError> {
        let mut authenticated = 0usize;
        let mut working = 0usize;
        let mut failing = 0usize;
        for sc in self.source_connections_in_collection(collection_id).await? {
            if !sc.authenticated {
                continue;
            }
            authenticated += 1;
            match self.last_job(sc.id).await?.map(|j| j.status) {
                Some(JobStatus::Completed | JobStatus::Running | JobStatus::Cancelling) => {
                    working += 1
                }
                Some(JobStatus::Failed) => failing += 1,
                _ => {}
            }
        }
        Ok(if authenticated == 0 {
            CollectionStatus::NeedsSource
        } else if working > 0 {
            CollectionStatus::Active
        } else if failing == authenticated {
            CollectionStatus::Error
        } else {
            CollectionStatus::NeedsSource
        })
    }

    // ---- source connections -------------------------------------------------------------

    /// The source connection if it exists and belongs to the organization.
    pub async fn source_connection(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<SourceConnection>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!(
                    "SELECT {SOURCE_CONNECTION_COLUMNS} FROM source_connections
                     WHERE id = ?1 AND organization_id = ?2"
                ),
                [id, organization_id],
                source_connection_row,
            ),
            Conn::Postgres(c) => pg::source_connection(c, organization_id, id).await,
        }
    }

    /// Whether the source connection exists and belongs to the organization: `GET` one job
    /// checks this on every call, so an existing connection's organization is cached (an
    /// index probe, no row decoded, on a miss).
    pub async fn has_source_connection(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<bool, ReadError> {
        let generation = match self.db.connections.get(&id) {
            Ok(owner) => return Ok(owner == organization_id),
            Err(generation) => generation,
        };
        let owner: Option<Uuid> = match self.conn {
            Conn::Sqlite(c) => one(
                c,
                "SELECT organization_id FROM source_connections WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?,
            Conn::Postgres(c) => pg::connection_owner(c, id).await?,
        };
        if let Some(owner) = owner {
            self.db.connections.fill(generation, id, owner);
        }
        Ok(owner == Some(organization_id))
    }

    /// An organization's source connections, newest first: `skip` then at most `limit` of
    /// those `keep` accepts.
    pub async fn source_connections(
        &self,
        organization_id: Uuid,
        skip: usize,
        limit: usize,
        keep: impl FnMut(&SourceConnection) -> bool,
    ) -> Result<Vec<SourceConnection>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => page(
                c,
                &format!(
                    "SELECT {SOURCE_CONNECTION_COLUMNS} FROM source_connections
                     WHERE organization_id = ?1 ORDER BY created_position DESC"
                ),
                [organization_id],
                source_connection_row,
                skip,
                limit,
                keep,
            ),
            Conn::Postgres(c) => {
                pg::source_connections(c, organization_id, skip, limit, keep).await
            }
        }
    }

    /// A collection's source connections, newest first.
    pub async fn source_connections_in_collection(
        &self,
        collection_id: Uuid,
    ) -> Result<Vec<SourceConnection>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => all(
                c,
                &format!(
                    "SELECT {SOURCE_CONNECTION_COLUMNS} FROM source_connections
                     WHERE collection_id = ?1 ORDER BY created_position DESC"
                ),
                [collection_id],
                source_connection_row,
            ),
            Conn::Postgres(c) => pg::source_connections_in_collection(c, collection_id).await,
        }
    }

    /// Status of a source connection from its last job ([`SourceConnectionStatus::of`]).
    pub async fn source_connection_status(
        &self,
        sc: &SourceConnection,
    ) -> Result<SourceConnectionStatus, ReadError> {
        if !sc.authenticated {
            return Ok(SourceConnectionStatus::Inactive);
        }
        Ok(SourceConnectionStatus::of(
            sc,
            self.last_job(sc.id).await?.as_ref(),
        ))
    }

    // ---- jobs ---------------------------------------------------------------------------

    /// One job; final ones come from a bounded cache (they never change).
    pub async fn job(&self, id: Uuid) -> Result<Option<JobState>, ReadError> {
        let generation = match self.db.jobs.get(&id) {
            Ok(job) => return Ok(Some(job)),
            Err(generation) => generation,
        };
        let job = match self.conn {
            Conn::Sqlite(c) => one(
                c,
                &format!("SELECT j.state FROM jobs j WHERE j.id = ?1 AND {JOB_VISIBLE}"),
                [id],
                |r| r.get::<_, Vec<u8>>(0),
            )?,
            Conn::Postgres(c) => pg::job_state(c, id).await?,
        };
        let job = job.map(|b| decode_job(&b)).transpose()?;
        if let Some(j) = job.as_ref().filter(|j| j.status.is_final()) {
            self.db.jobs.fill(generation, id, j.clone());
        }
        Ok(job)
    }

    /// A source connection's jobs, newest first (also a deleted connection's live jobs):
    /// `skip` then at most `limit`.
    pub async fn jobs_of(
        &self,
        source_connection_id: Uuid,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<JobState>, ReadError> {
        let blobs = match self.conn {
            Conn::Sqlite(c) => page(
                c,
                &format!(
                    "SELECT j.state FROM jobs j WHERE j.source_connection_id = ?1 AND {JOB_VISIBLE}
                     ORDER BY j.created_position DESC"
                ),
                [source_connection_id],
                |r| r.get::<_, Vec<u8>>(0),
                skip,
                limit,
                |_| true,
            )?,
            Conn::Postgres(c) => pg::jobs_of(c, source_connection_id, skip, limit).await?,
        };
        blobs.iter().map(|b| decode_job(b)).collect()
    }

    pub async fn last_job(
        &self,
        source_connection_id: Uuid,
    ) -> Result<Option<JobState>, ReadError> {
        Ok(self.jobs_of(source_connection_id, 0, 1).await?.pop())
    }

    /// Ids of the connection's jobs that are pending, running or cancelling.
    pub async fn active_jobs_of(&self, source_connection_id: Uuid) -> Result<Vec<Uuid>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => all(
                c,
                "SELECT id FROM jobs WHERE source_connection_id = ?1 AND active = 1
                 ORDER BY created_position DESC",
                [source_connection_id],
                |r| r.get(0),
            ),
            Conn::Postgres(c) => pg::active_jobs_of(c, source_connection_id).await,
        }
    }

    /// Ids of every job, of any connection, that is pending, running or cancelling: what
    /// the supervisor recovers at start-up.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Uuid>, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => all(c, "SELECT id FROM jobs WHERE active = 1", [], |r| r.get(0)),
            Conn::Postgres(c) => pg::unfinished_jobs(c).await,
        }
    }

    /// What `/health` shows for an organization: kept by the fold, one row.
    pub async fn organization_counts(
        &self,
        organization_id: Uuid,
    ) -> Result<OrganizationCounts, ReadError> {
        let found = match self.conn {
            Conn::Sqlite(c) => one(
                c,
                "SELECT collections, source_connections, active_jobs FROM organization_counts
                 WHERE organization_id = ?1",
                [organization_id],
                |r| {
                    Ok(OrganizationCounts {
                        collections: r.get::<_, i64>(0)? as u64,
                        source_connections: r.get::<_, i64>(1)? as u64,
                        active_jobs: r.get::<_, i64>(2)? as u64,
                    })
                },
            )?,
            Conn::Postgres(c) => pg::organization_counts(c, organization_id).await?,
        };
        Ok(found.unwrap_or_default())
    }

    /// Job rows stored, readable or waiting to be purged (diagnostics and tests).
    pub async fn job_rows(&self) -> Result<u64, ReadError> {
        match self.conn {
            Conn::Sqlite(c) => Ok(
                one(c, "SELECT COUNT(*) FROM jobs", [], |r| r.get::<_, i64>(0))?.unwrap_or(0)
                    as u64,
            ),
            Conn::Postgres(c) => pg::job_rows(c).await,
        }
    }

    /// Every readable row (diagnostics and tests: O(model), never on a request path).
    pub async fn dump(&self) -> Result<ModelDump, ReadError> {
        let c = match self.conn {
            Conn::Sqlite(c) => c,
            Conn::Postgres(c) => {
                let d = pg::dump(c).await?;
                return Ok(ModelDump {
                    position: self.position,
                    organizations: d.organizations,
                    api_keys: d.api_keys,
                    collections: d.collections,
                    source_connections: d.source_connections,
                    jobs: d
                        .jobs
                        .iter()
                        .map(|b| decode_job(b))
                        .collect::<Result<_, _>>()?,
                    counts: d.counts,
                    webhook_subscriptions: d.webhook_subscriptions,
                    webhook_messages: d.webhook_messages,
                    webhook_deliveries: d.webhook_deliveries,
                    webhook_attempts: d.webhook_attempts,
                });
            }
        };
        let sorted = |sql: &str| format!("{sql} ORDER BY 1");
        let jobs: Vec<Vec<u8>> = all(
            c,
            &format!("SELECT j.state FROM jobs j WHERE {JOB_VISIBLE} ORDER BY j.id"),
            [],
            |r| r.get(0),
        )?;
        Ok(ModelDump {
            position: self.position,
            organizations: all(
                c,
                &sorted("SELECT id, name, created_at FROM organizations"),
                [],
                organization_row,
            )?,
            api_keys: all(
                c,
                &sorted(&format!("SELECT {KEY_COLUMNS} FROM api_keys")),
                [],
                key_row,
            )?,
            collections: all(
                c,
                &sorted(&format!("SELECT {COLLECTION_COLUMNS} FROM collections")),
                [],
                collection_row,
            )?,
            source_connections: all(
                c,
                &sorted(&format!(
                    "SELECT {SOURCE_CONNECTION_COLUMNS} FROM source_connections"
                )),
                [],
                source_connection_row,
            )?,
            jobs: jobs
                .iter()
                .map(|b| decode_job(b))
                .collect::<Result<_, _>>()?,
            counts: all(
                c,
                &sorted(
                    "SELECT organization_id, collections, source_connections, active_jobs
                     FROM organization_counts
                     WHERE collections + source_connections + active_jobs <> 0",
                ),
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        [
                            r.get::<_, i64>(1)? as u64,
                            r.get::<_, i64>(2)? as u64,
                            r.get::<_, i64>(3)? as u64,
                        ],
                    ))
                },
            )?,
            webhook_subscriptions: all(
                c,
                &sorted(&format!(
                    "SELECT {WEBHOOK_SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions"
                )),
                [],
                webhook_subscription_row,
            )?,
            webhook_messages: all(
                c,
                &sorted(&format!("SELECT {MESSAGE_COLUMNS} FROM webhook_messages")),
                [],
                message_row,
            )?,
            webhook_deliveries: all(
                c,
                "SELECT message_id, subscription_id, status, attempts, round_start, next_attempt_at
                 FROM webhook_deliveries ORDER BY 1, 2",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )?,
            webhook_attempts: all(
                c,
                &sorted(&format!("SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts")),
                [],
                attempt_row,
            )?,
        })
    }
}
