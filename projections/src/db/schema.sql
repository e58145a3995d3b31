-- The read model's tables (SQLite). Plain SQL, so that a PostgreSQL twin is a translation
-- of types (BLOB -> uuid/bytea, INTEGER -> bigint), not a redesign.
--
-- Ids are 16-byte BLOBs; timestamps are RFC 3339 UTC text with nine fractional digits
-- (domain::time::nanos), which sorts as time does; `created_position` is the global
-- position of a row's creation: the order of every listing, rebuilt identically.

-- One row per projection: how far it has folded the log, and the shape of these tables.
-- Rows and position are written in the same transaction.
CREATE TABLE IF NOT EXISTS projection (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    schema_version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS organizations (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS organizations_by_name ON organizations (name, created_position);

CREATE TABLE IF NOT EXISTS api_keys (
    key_id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    key_hash TEXT NOT NULL,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    created_position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_by_hash ON api_keys (key_hash, created_position);

CREATE TABLE IF NOT EXISTS collections (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    name TEXT NOT NULL,
    readable_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    created_position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS collections_by_organization
    ON collections (organization_id, created_position);
CREATE INDEX IF NOT EXISTS collections_by_readable_id
    ON collections (organization_id, readable_id, created_position);

CREATE TABLE IF NOT EXISTS source_connections (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    collection_id BLOB NOT NULL,
    readable_collection_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    short_name TEXT NOT NULL,
    config TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    authenticated INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    created_position INTEGER NOT NULL,
    total_runs INTEGER NOT NULL,
    successful_runs INTEGER NOT NULL,
    failed_runs INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS source_connections_by_organization
    ON source_connections (organization_id, created_position);
CREATE INDEX IF NOT EXISTS source_connections_by_collection
    ON source_connections (collection_id, created_position);

-- A job row: `state` is the job's JobState (MessagePack); the columns beside it are what
-- lookups and lists need. A job stays readable while its connection exists or while it
-- is active (a deleted connection's live jobs can still be cancelled).
CREATE TABLE IF NOT EXISTS jobs (
    id BLOB PRIMARY KEY,
    source_connection_id BLOB NOT NULL,
    organization_id BLOB NOT NULL,
    active INTEGER NOT NULL,
    created_position INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_source_connection
    ON jobs (source_connection_id, created_position);
CREATE INDEX IF NOT EXISTS jobs_live ON jobs (source_connection_id, created_position)
    WHERE active = 1;

-- Connections deleted whose final jobs are still to be removed, a batch per transaction
-- (they are invisible from the moment of the deletion).
CREATE TABLE IF NOT EXISTS purge_queue (
    source_connection_id BLOB PRIMARY KEY
);

-- What /health shows per organization, kept by the fold instead of counted per call.
-- active_jobs: active jobs of existing source connections.
CREATE TABLE IF NOT EXISTS organization_counts (
    organization_id BLOB PRIMARY KEY,
    collections INTEGER NOT NULL,
    source_connections INTEGER NOT NULL,
    active_jobs INTEGER NOT NULL
);

-- Webhook subscriptions (event_types: a JSON array of strings). The secret is here because
-- the log holds it (see domain::events::WebhookEvent): deliveries are signed with it.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    disabled INTEGER NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    created_position INTEGER NOT NULL,
    -- Why the dispatcher disabled it (NULL: enabled, or disabled by hand).
    disabled_reason TEXT,
    -- The first failed attempt since the last successful one (NULL: none failing).
    failing_since TEXT
);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_by_organization
    ON webhook_subscriptions (organization_id, created_position);

-- Webhook messages: every event of the log that has a webhook type (its id is the event's),
-- for the retention period (SYNCJOBS_WEBHOOK_RETENTION_DAYS): the organization's event
-- history. Written for every job lifecycle event, so kept small: a sync.* payload is stored
-- as a MessagePack BLOB of what the columns do not hold (db::fold::StoredSync, rendered into
-- the JSON sent when read); the other types' payloads are their JSON.
CREATE TABLE IF NOT EXISTS webhook_messages (
    id BLOB PRIMARY KEY,
    organization_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    created_position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_messages_by_organization
    ON webhook_messages (organization_id, created_position);
-- The retention purge takes the oldest first.
CREATE INDEX IF NOT EXISTS webhook_messages_by_time ON webhook_messages (timestamp);

-- One row per message and matching subscription (at the message's position): `pending`
-- until an attempt succeeds (`success`) or the last one fails (`failed`). The attempts
-- themselves are events of the log (domain::webhook::WebhookDelivery), folded here.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    message_id BLOB NOT NULL,
    subscription_id BLOB NOT NULL,
    organization_id BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    -- Attempts before the last recovery: the retry schedule counts from there.
    round_start INTEGER NOT NULL,
    next_attempt_at TEXT,
    created_position INTEGER NOT NULL,
    PRIMARY KEY (message_id, subscription_id)
);
-- Each subscription's next due delivery, one index seek (the dispatcher's read).
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (subscription_id, next_attempt_at, created_position)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_subscription
    ON webhook_deliveries (subscription_id, status);

CREATE TABLE IF NOT EXISTS webhook_attempts (
    id BLOB PRIMARY KEY,
    message_id BLOB NOT NULL,
    subscription_id BLOB NOT NULL,
    organization_id BLOB NOT NULL,
    attempt INTEGER NOT NULL,
    url TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    created_position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_message
    ON webhook_attempts (message_id, created_position);
CREATE INDEX IF NOT EXISTS webhook_attempts_by_subscription
    ON webhook_attempts (subscription_id, created_position);
