//! The API's queries on PostgreSQL, each by an index: the SQL of `db::view` translated
//! (the caches and the rules around them are [`crate::ReadView`]'s, shared by both engines).

use super::parse_time;
use crate::db::view::OrganizationCounts;
use crate::db::ReadError;
use crate::model::{
    ApiKey, Collection, DueDelivery, Organization, SourceConnection, WebhookAttempt,
    WebhookMessage, WebhookSubscription,
};
use deadpool_postgres::ClientWrapper as Client;
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

const JOB_VISIBLE: &str = "(j.active OR EXISTS
    (SELECT 1 FROM read_source_connections s WHERE s.id = j.source_connection_id))";
pub(crate) const COLLECTION_COLUMNS: &str =
    "id, organization_id, name, readable_id, created_at, modified_at, created_position";
pub(crate) const SOURCE_CONNECTION_COLUMNS: &str =
    "id, organization_id, collection_id, readable_collection_id,
    name, description, short_name, config, auth_method, authenticated, created_at, modified_at,
    created_position, total_runs, successful_runs, failed_runs";
const KEY_COLUMNS: &str =
    "key_id, organization_id, key_hash, prefix, created_at, expires_at, revoked_at";

fn optional_time(r: &Row, i: usize) -> Result<Option<chrono::DateTime<chrono::Utc>>, ReadError> {
    r.get::<_, Option<&str>>(i).map(parse_time).transpose()
}

/// A string stored as its UTF-8 bytes (see schema.sql).
fn text(r: &Row, i: usize) -> Result<String, ReadError> {
    String::from_utf8(r.get::<_, Vec<u8>>(i)).map_err(|e| ReadError::Decode(e.to_string()))
}

fn optional_text(r: &Row, i: usize) -> Result<Option<String>, ReadError> {
    r.get::<_, Option<Vec<u8>>>(i)
        .map(|b| String::from_utf8(b).map_err(|e| ReadError::Decode(e.to_string())))
        .transpose()
}

fn key_row(r: &Row) -> Result<ApiKey, ReadError> {
    Ok(ApiKey {
        key_id: r.get(0),
        organization_id: r.get(1),
        key_hash: text(r, 2)?,
        prefix: text(r, 3)?,
        created_at: parse_time(r.get(4))?,
        expires_at: optional_time(r, 5)?,
        revoked_at: optional_time(r, 6)?,
    })
}

fn organization_row(r: &Row) -> Result<Organization, ReadError> {
    Ok(Organization {
        id: r.get(0),
        name: text(r, 1)?,
        created_at: parse_time(r.get(2))?,
    })
}

pub(crate) const WEBHOOK_SUBSCRIPTION_COLUMNS: &str = "id, organization_id, url, event_types,
    disabled, description, secret, created_at, updated_at, created_position, disabled_reason,
    failing_since";

pub(crate) fn webhook_subscription_row(r: &Row) -> Result<WebhookSubscription, ReadError> {
    Ok(WebhookSubscription {
        id: r.get(0),
        organization_id: r.get(1),
        url: text(r, 2)?,
        event_types: serde_json::from_str(r.get(3))
            .map_err(|e| ReadError::Decode(e.to_string()))?,
        disabled: r.get(4),
        description: optional_text(r, 5)?,
        secret: text(r, 6)?,
        created_at: parse_time(r.get(7))?,
        updated_at: parse_time(r.get(8))?,
        created_position: r.get::<_, i64>(9) as u64,
        disabled_reason: optional_text(r, 10)?,
        failing_since: optional_time(r, 11)?,
    })
}

pub(crate) async fn webhook_subscriptions(
    c: &Client,
    organization_id: Uuid,
) -> Result<Vec<WebhookSubscription>, ReadError> {
    all(
        c,
        &format!(
            "SELECT {WEBHOOK_SUBSCRIPTION_COLUMNS} FROM read_webhook_subscriptions
             WHERE organization_id = $1 ORDER BY created_position DESC"
        ),
        &[&organization_id],
        webhook_subscription_row,
    )
    .await
}

pub(crate) async fn webhook_subscription(
    c: &Client,
    organization_id: Uuid,
    id: Uuid,
) -> Result<Option<WebhookSubscription>, ReadError> {
    one(
        c,
        &format!(
            "SELECT {WEBHOOK_SUBSCRIPTION_COLUMNS} FROM read_webhook_subscriptions
             WHERE id = $1 AND organization_id = $2"
        ),
        &[&id, &organization_id],
        webhook_subscription_row,
    )
    .await
}

const MESSAGE_COLUMNS: &str =
    "id, organization_id, event_type, payload, timestamp, created_position";
const ATTEMPT_COLUMNS: &str = "id, message_id, subscription_id, organization_id, attempt, url,
    status_code, response, timestamp";

fn message_row(r: &Row) -> Result<WebhookMessage, ReadError> {
    let organization_id = r.get(1);
    let event_type = text(r, 2)?;
    let timestamp = parse_time(r.get(4))?;
    let payload = crate::db::fold::render_payload(
        &event_type,
        organization_id,
        &timestamp,
        r.get::<_, &[u8]>(3),
    )?;
    Ok(WebhookMessage {
        id: r.get(0),
        organization_id,
        event_type,
        payload,
        timestamp,
        created_position: r.get::<_, i64>(5) as u64,
    })
}

fn attempt_row(r: &Row) -> Result<WebhookAttempt, ReadError> {
    Ok(WebhookAttempt {
        id: r.get(0),
        message_id: r.get(1),
        subscription_id: r.get(2),
        organization_id: r.get(3),
        attempt: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
        url: text(r, 5)?,
        status_code: u16::try_from(r.get::<_, i64>(6)).unwrap_or(0),
        response: text(r, 7)?,
        timestamp: parse_time(r.get(8))?,
    })
}

pub(crate) async fn due_webhook_deliveries(
    c: &Client,
    now: &str,
    limit: usize,
) -> Result<Vec<DueDelivery>, ReadError> {
    all(
        c,
        "SELECT d.message_id, d.subscription_id, d.organization_id, d.attempts,
           d.next_attempt_at, s.url, s.secret, m.payload, d.round_start, s.failing_since,
           m.event_type, m.timestamp
         FROM read_webhook_subscriptions s
         CROSS JOIN LATERAL (
           SELECT * FROM read_webhook_deliveries x
           WHERE x.subscription_id = s.id AND x.status = 'pending' AND x.next_attempt_at <= $1
           ORDER BY x.next_attempt_at, x.created_position LIMIT 1) d
         JOIN read_webhook_messages m ON m.id = d.message_id
         WHERE NOT s.disabled
         ORDER BY d.next_attempt_at, d.created_position LIMIT $2",
        &[&now, &(limit as i64)],
        |r| {
            Ok(DueDelivery {
                message_id: r.get(0),
                subscription_id: r.get(1),
                organization_id: r.get(2),
                attempts: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                next_attempt_at: parse_time(r.get(4))?,
                url: text(r, 5)?,
                secret: text(r, 6)?,
                payload: crate::db::fold::render_payload(
                    &text(r, 10)?,
                    r.get(2),
                    &parse_time(r.get(11))?,
                    r.get::<_, &[u8]>(7),
                )?,
                round_start: u32::try_from(r.get::<_, i64>(8)).unwrap_or(0),
                failing_since: optional_time(r, 9)?,
            })
        },
    )
    .await
}

pub(crate) async fn failed_webhook_deliveries(
    c: &Client,
    subscription_id: Uuid,
    since: &str,
    until: &str,
) -> Result<Vec<Uuid>, ReadError> {
    all(
        c,
        "SELECT d.message_id FROM read_webhook_deliveries d
         JOIN read_webhook_messages m ON m.id = d.message_id
         WHERE d.subscription_id = $1 AND d.status = 'failed'
           AND m.timestamp >= $2 AND m.timestamp < $3
         ORDER BY d.created_position",
        &[&subscription_id, &since, &until],
        |r| Ok(r.get(0)),
    )
    .await
}

pub(crate) async fn webhook_messages(
    c: &Client,
    organization_id: Uuid,
    event_types: &[String],
    limit: usize,
) -> Result<Vec<WebhookMessage>, ReadError> {
    let types: Vec<&[u8]> = event_types.iter().map(|t| t.as_bytes()).collect();
    all(
        c,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM read_webhook_messages WHERE organization_id = $1
               AND (cardinality($2::bytea[]) = 0 OR event_type = ANY($2))
             ORDER BY created_position DESC LIMIT $3"
        ),
        &[&organization_id, &types, &(limit as i64)],
        message_row,
    )
    .await
}

pub(crate) async fn webhook_message(
    c: &Client,
    organization_id: Uuid,
    id: Uuid,
) -> Result<Option<WebhookMessage>, ReadError> {
    one(
        c,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM read_webhook_messages
             WHERE id = $1 AND organization_id = $2"
        ),
        &[&id, &organization_id],
        message_row,
    )
    .await
}

pub(crate) async fn webhook_attempts(
    c: &Client,
    column: &str,
    id: Uuid,
    limit: usize,
) -> Result<Vec<WebhookAttempt>, ReadError> {
    page(
        c,
        &format!(
            "SELECT {ATTEMPT_COLUMNS} FROM read_webhook_attempts WHERE {column} = $1
             ORDER BY created_position DESC"
        ),
        &[&id],
        attempt_row,
        0,
        limit,
        |_| true,
    )
    .await
}

pub(crate) fn collection_row(r: &Row) -> Result<Collection, ReadError> {
    Ok(Collection {
        id: r.get(0),
        organization_id: r.get(1),
        name: text(r, 2)?,
        readable_id: text(r, 3)?,
        created_at: parse_time(r.get(4))?,
        modified_at: parse_time(r.get(5))?,
        created_position: r.get::<_, i64>(6) as u64,
    })
}

pub(crate) fn source_connection_row(r: &Row) -> Result<SourceConnection, ReadError> {
    Ok(SourceConnection {
        id: r.get(0),
        organization_id: r.get(1),
        collection_id: r.get(2),
        readable_collection_id: text(r, 3)?,
        name: text(r, 4)?,
        description: optional_text(r, 5)?,
        short_name: text(r, 6)?,
        config: serde_json::from_str(r.get(7)).map_err(|e| ReadError::Decode(e.to_string()))?,
        auth_method: text(r, 8)?,
        authenticated: r.get(9),
        created_at: parse_time(r.get(10))?,
        modified_at: parse_time(r.get(11))?,
        created_position: r.get::<_, i64>(12) as u64,
        total_runs: r.get::<_, i64>(13) as u64,
        successful_runs: r.get::<_, i64>(14) as u64,
        failed_runs: r.get::<_, i64>(15) as u64,
    })
}

fn state(r: &Row) -> Result<Vec<u8>, ReadError> {
    Ok(r.get::<_, Vec<u8>>(0))
}

async fn one<T>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    row: impl FnOnce(&Row) -> Result<T, ReadError>,
) -> Result<Option<T>, ReadError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_opt(&stmt, params)
        .await?
        .as_ref()
        .map(row)
        .transpose()
}

/// Rows of `sql` in order, `skip`ped and at most `limit` of those `keep` accepts; read as
/// a stream, so a page stops reading where it is full.
async fn page<T>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    row: impl Fn(&Row) -> Result<T, ReadError>,
    skip: usize,
    limit: usize,
    mut keep: impl FnMut(&T) -> bool,
) -> Result<Vec<T>, ReadError> {
    let stmt = c.prepare_cached(sql).await?;
    let rows = c.query_raw(&stmt, params.iter().copied()).await?;
    pin_mut!(rows);
    let (mut skipped, mut out) = (0, Vec::new());
    while out.len() < limit {
        let Some(r) = rows.try_next().await? else {
            break;
        };
        let item = row(&r)?;
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

async fn all<T>(
    c: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    row: impl Fn(&Row) -> Result<T, ReadError>,
) -> Result<Vec<T>, ReadError> {
    page(c, sql, params, row, 0, usize::MAX, |_| true).await
}

pub(crate) async fn key_by_hash(
    c: &Client,
    key_hash: &str,
) -> Result<Option<(ApiKey, bool)>, ReadError> {
    one(
        c,
        &format!(
            "SELECT {KEY_COLUMNS}, EXISTS (SELECT 1 FROM read_organizations o WHERE o.id = k.organization_id)
             FROM read_api_keys k WHERE key_hash = $1 ORDER BY created_position DESC LIMIT 1"
        ),
        &[&key_hash.as_bytes()],
        |r| Ok((key_row(r)?, r.get::<_, bool>(7))),
    )
    .await
}

pub(crate) async fn api_key(c: &Client, key_id: Uuid) -> Result<Option<ApiKey>, ReadError> {
    one(
        c,
        &format!("SELECT {KEY_COLUMNS} FROM read_api_keys WHERE key_id = $1"),
        &[&key_id],
        key_row,
    )
    .await
}

pub(crate) async fn api_keys(c: &Client) -> Result<Vec<ApiKey>, ReadError> {
    all(
        c,
        &format!("SELECT {KEY_COLUMNS} FROM read_api_keys ORDER BY created_at, key_id"),
        &[],
        key_row,
    )
    .await
}

pub(crate) async fn organization(c: &Client, id: Uuid) -> Result<Option<Organization>, ReadError> {
    one(
        c,
        "SELECT id, name, created_at FROM read_organizations WHERE id = $1",
        &[&id],
        organization_row,
    )
    .await
}

pub(crate) async fn organization_by_name(
    c: &Client,
    name: &str,
) -> Result<Option<Organization>, ReadError> {
    one(
        c,
        "SELECT id, name, created_at FROM read_organizations WHERE name = $1
         ORDER BY created_position DESC LIMIT 1",
        &[&name.as_bytes()],
        organization_row,
    )
    .await
}

pub(crate) async fn collection(
    c: &Client,
    organization_id: Uuid,
    readable_id: &str,
) -> Result<Option<Collection>, ReadError> {
    one(
        c,
        &format!(
            "SELECT {COLLECTION_COLUMNS} FROM read_collections
             WHERE organization_id = $1 AND readable_id = $2
             ORDER BY created_position DESC LIMIT 1"
        ),
        &[&organization_id, &readable_id.as_bytes()],
        collection_row,
    )
    .await
}

pub(crate) async fn collection_by_id(
    c: &Client,
    id: Uuid,
) -> Result<Option<Collection>, ReadError> {
    one(
        c,
        &format!("SELECT {COLLECTION_COLUMNS} FROM read_collections WHERE id = $1"),
        &[&id],
        collection_row,
    )
    .await
}

pub(crate) async fn collections(
    c: &Client,
    organization_id: Uuid,
    skip: usize,
    limit: usize,
    keep: impl FnMut(&Collection) -> bool,
) -> Result<Vec<Collection>, ReadError> {
    page(
        c,
        &format!(
            "SELECT {COLLECTION_COLUMNS} FROM read_collections WHERE organization_id = $1
             ORDER BY created_position DESC"
        ),
        &[&organization_id],
        collection_row,
        skip,
        limit,
        keep,
    )
    .await
}

pub(crate) async fn source_connection(
    c: &Client,
    organization_id: Uuid,
    id: Uuid,
) -> Result<Option<SourceConnection>, ReadError> {
    one(
        c,
        &format!(
            "SELECT {SOURCE_CONNECTION_COLUMNS} FROM read_source_connections
             WHERE id = $1 AND organization_id = $2"
        ),
        &[&id, &organization_id],
        source_connection_row,
    )
    .await
}

pub(crate) async fn connection_owner(c: &Client, id: Uuid) -> Result<Option<Uuid>, ReadError> {
    one(
        c,
        "SELECT organization_id FROM read_source_connections WHERE id = $1",
        &[&id],
        |r| Ok(r.get(0)),
    )
    .await
}

pub(crate) async fn source_connections(
    c: &Client,
    organization_id: Uuid,
    skip: usize,
    limit: usize,
    keep: impl FnMut(&SourceConnection) -> bool,
) -> Result<Vec<SourceConnection>, ReadError> {
    page(
        c,
        &format!(
            "SELECT {SOURCE_CONNECTION_COLUMNS} FROM read_source_connections
             WHERE organization_id = $1 ORDER BY created_position DESC"
        ),
        &[&organization_id],
        source_connection_row,
        skip,
        limit,
        keep,
    )
    .await
}

pub(crate) async fn source_connections_in_collection(
    c: &Client,
    collection_id: Uuid,
) -> Result<Vec<SourceConnection>, ReadError> {
    all(
        c,
        &format!(
            "SELECT {SOURCE_CONNECTION_COLUMNS} FROM read_source_connections
             WHERE collection_id = $1 ORDER BY created_position DESC"
        ),
        &[&collection_id],
        source_connection_row,
    )
    .await
}

pub(crate) async fn job_state(c: &Client, id: Uuid) -> Result<Option<Vec<u8>>, ReadError> {
    one(
        c,
        &format!("SELECT j.state FROM read_jobs j WHERE j.id = $1 AND {JOB_VISIBLE}"),
        &[&id],
        state,
    )
    .await
}

/// Paged in SQL (no filter after it): a connection may have many jobs.
pub(crate) async fn jobs_of(
    c: &Client,
    source_connection_id: Uuid,
    skip: usize,
    limit: usize,
) -> Result<Vec<Vec<u8>>, ReadError> {
    let clamp = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    all(
        c,
        &format!(
            "SELECT j.state FROM read_jobs j WHERE j.source_connection_id = $1 AND {JOB_VISIBLE}
             ORDER BY j.created_position DESC LIMIT $2 OFFSET $3"
        ),
        &[&source_connection_id, &clamp(limit), &clamp(skip)],
        state,
    )
    .await
}

pub(crate) async fn active_jobs_of(
    c: &Client,
    source_connection_id: Uuid,
) -> Result<Vec<Uuid>, ReadError> {
    all(
        c,
        "SELECT id FROM read_jobs WHERE source_connection_id = $1 AND active
         ORDER BY created_position DESC",
        &[&source_connection_id],
        |r| Ok(r.get(0)),
    )
    .await
}

pub(crate) async fn unfinished_jobs(c: &Client) -> Result<Vec<Uuid>, ReadError> {
    all(c, "SELECT id FROM read_jobs WHERE active", &[], |r| {
        Ok(r.get(0))
    })
    .await
}

fn counts(r: &Row, from: usize) -> [u64; 3] {
    [
        r.get::<_, i64>(from) as u64,
        r.get::<_, i64>(from + 1) as u64,
        r.get::<_, i64>(from + 2) as u64,
    ]
}

pub(crate) async fn organization_counts(
    c: &Client,
    organization_id: Uuid,
) -> Result<Option<OrganizationCounts>, ReadError> {
    one(
        c,
        "SELECT collections, source_connections, active_jobs FROM read_organization_counts
         WHERE organization_id = $1",
        &[&organization_id],
        |r| {
            let [collections, source_connections, active_jobs] = counts(r, 0);
            Ok(OrganizationCounts {
                collections,
                source_connections,
                active_jobs,
            })
        },
    )
    .await
}

pub(crate) async fn job_rows(c: &Client) -> Result<u64, ReadError> {
    Ok(one(c, "SELECT COUNT(*) FROM read_jobs", &[], |r| {
        Ok(r.get::<_, i64>(0) as u64)
    })
    .await?
    .unwrap_or(0))
}

/// Every readable row, each list in id order (the parts of [`crate::ModelDump`]).
pub(crate) struct Dump {
    pub organizations: Vec<Organization>,
    pub api_keys: Vec<ApiKey>,
    pub collections: Vec<Collection>,
    pub source_connections: Vec<SourceConnection>,
    pub jobs: Vec<Vec<u8>>,
    pub counts: Vec<(Uuid, [u64; 3])>,
    pub webhook_subscriptions: Vec<WebhookSubscription>,
    pub webhook_messages: Vec<WebhookMessage>,
    pub webhook_deliveries: Vec<crate::model::WebhookDeliveryRow>,
    pub webhook_attempts: Vec<WebhookAttempt>,
}

pub(crate) async fn dump(c: &Client) -> Result<Dump, ReadError> {
    Ok(Dump {
        organizations: all(
            c,
            "SELECT id, name, created_at FROM read_organizations ORDER BY 1",
            &[],
            organization_row,
        )
        .await?,
        api_keys: all(
            c,
            &format!("SELECT {KEY_COLUMNS} FROM read_api_keys ORDER BY 1"),
            &[],
            key_row,
        )
        .await?,
        collections: all(
            c,
            &format!("SELECT {COLLECTION_COLUMNS} FROM read_collections ORDER BY 1"),
            &[],
            collection_row,
        )
        .await?,
        source_connections: all(
            c,
            &format!("SELECT {SOURCE_CONNECTION_COLUMNS} FROM read_source_connections ORDER BY 1"),
            &[],
            source_connection_row,
        )
        .await?,
        jobs: all(
            c,
            &format!("SELECT j.state FROM read_jobs j WHERE {JOB_VISIBLE} ORDER BY j.id"),
            &[],
            state,
        )
        .await?,
        counts: all(
            c,
            "SELECT organization_id, collections, source_connections, active_jobs
             FROM read_organization_counts
             WHERE collections + source_connections + active_jobs <> 0 ORDER BY 1",
            &[],
            |r| Ok((r.get(0), counts(r, 1))),
        )
        .await?,
        webhook_subscriptions: all(
            c,
            &format!(
                "SELECT {WEBHOOK_SUBSCRIPTION_COLUMNS} FROM read_webhook_subscriptions ORDER BY 1"
            ),
            &[],
            webhook_subscription_row,
        )
        .await?,
        webhook_messages: all(
            c,
            &format!("SELECT {MESSAGE_COLUMNS} FROM read_webhook_messages ORDER BY 1"),
            &[],
            message_row,
        )
        .await?,
        webhook_deliveries: all(
            c,
            "SELECT message_id, subscription_id, status, attempts, round_start, next_attempt_at
             FROM read_webhook_deliveries ORDER BY 1, 2",
            &[],
            |r| {
                Ok((
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                    u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
                    r.get(5),
                ))
            },
        )
        .await?,
        webhook_attempts: all(
            c,
            &format!("SELECT {ATTEMPT_COLUMNS} FROM read_webhook_attempts ORDER BY 1"),
            &[],
            attempt_row,
        )
        .await?,
    })
}
