-- The read model's tables in PostgreSQL: db/schema.sql translated (BLOB ids -> uuid,
-- INTEGER -> bigint or boolean, MessagePack state -> bytea). Timestamps keep the SQLite
-- model's text encoding (RFC 3339 UTC, nine fractional digits: sorts as time does), so both
-- engines store and answer exactly the same values. Strings from events (names, ids,
-- hashes, ...) are bytea holding their UTF-8: PostgreSQL's text cannot hold a NUL, and an
-- event the model cannot store would stop the projection. Every statement is idempotent: several
-- nodes may start together (the caller also holds an advisory lock around it).

-- One row per projection: how far it has folded the log, and the shape of these tables.
-- Rows and position are written in the same transaction; a batch locks this row first.
CREATE TABLE IF NOT EXISTS read_projection (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    schema_version bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS read_organizations (
    id uuid PRIMARY KEY,
    name bytea NOT NULL,
    created_at text NOT NULL,
    created_position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS read_organizations_by_name
    ON read_organizations (name, created_position);

CREATE TABLE IF NOT EXISTS read_api_keys (
    key_id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    key_hash bytea NOT NULL,
    prefix bytea NOT NULL,
    created_at text NOT NULL,
    expires_at text,
    revoked_at text,
    created_position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS read_api_keys_by_hash ON read_api_keys (key_hash, created_position);

CREATE TABLE IF NOT EXISTS read_collections (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name bytea NOT NULL,
    readable_id bytea NOT NULL,
    created_at text NOT NULL,
    modified_at text NOT NULL,
    created_position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS read_collections_by_organization
    ON read_collections (organization_id, created_position);
CREATE INDEX IF NOT EXISTS read_collections_by_readable_id
    ON read_collections (organization_id, readable_id, created_position);

CREATE TABLE IF NOT EXISTS read_source_connections (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    collection_id uuid NOT NULL,
    readable_collection_id bytea NOT NULL,
    name bytea NOT NULL,
    description bytea,
    short_name bytea NOT NULL,
    config text NOT NULL,
    auth_method bytea NOT NULL,
    authenticated boolean NOT NULL,
    created_at text NOT NULL,
    modified_at text NOT NULL,
    created_position bigint NOT NULL,
    total_runs bigint NOT NULL,
    successful_runs bigint NOT NULL,
    failed_runs bigint NOT NULL
) WITH (fillfactor = 50);
-- Every batch adds to the run counters of the connections its jobs ended in: with full pages
-- each such update moved the row to a new page (and a new index entry) and the table bloated
-- faster than autovacuum pruned it; a first start on 100k jobs spent 4.9 s in those UPDATEs.
-- With room on the page they are HOT updates, pruned in place (1.0 s). ALTER: for tables made
-- before (it takes effect on pages written from now on).
ALTER TABLE read_source_connections SET (fillfactor = 50);
CREATE INDEX IF NOT EXISTS read_source_connections_by_organization
    ON read_source_connections (organization_id, created_position);
CREATE INDEX IF NOT EXISTS read_source_connections_by_collection
    ON read_source_connections (collection_id, created_position);

-- A job row: `state` is the job's JobState (MessagePack). A job stays readable while its
-- connection exists or while it is active.
CREATE TABLE IF NOT EXISTS read_jobs (
    id uuid PRIMARY KEY,
    source_connection_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    active boolean NOT NULL,
    created_position bigint NOT NULL,
    state bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS read_jobs_by_source_connection
    ON read_jobs (source_connection_id, created_position);
CREATE INDEX IF NOT EXISTS read_jobs_live ON read_jobs (source_connection_id, created_position)
    WHERE active;

-- Connections deleted whose final jobs are still to be removed, a batch per transaction.
CREATE TABLE IF NOT EXISTS read_purge_queue (
    source_connection_id uuid PRIMARY KEY
);

-- What /health shows per organization, kept by the fold instead of counted per call.
CREATE TABLE IF NOT EXISTS read_organization_counts (
    organization_id uuid PRIMARY KEY,
    collections bigint NOT NULL,
    source_connections bigint NOT NULL,
    active_jobs bigint NOT NULL
) WITH (fillfactor = 50);
ALTER TABLE read_organization_counts SET (fillfactor = 50);

-- Webhook subscriptions (event_types: a JSON array of strings, as text).
CREATE TABLE IF NOT EXISTS read_webhook_subscriptions (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    url bytea NOT NULL,
    event_types text NOT NULL,
    disabled boolean NOT NULL,
    description bytea,
    secret bytea NOT NULL,
    created_at text NOT NULL,
    updated_at text NOT NULL,
    created_position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS read_webhook_subscriptions_by_organization
    ON read_webhook_subscriptions (organization_id, created_position);

-- Webhook messages, deliveries and attempts: db/schema.sql's, translated.
CREATE TABLE IF NOT EXISTS read_webhook_messages (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    event_type bytea NOT NULL,
    payload bytea NOT NULL,
    timestamp text NOT NULL,
    created_position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS read_webhook_messages_by_organization
    ON read_webhook_messages (organization_id, created_position);

CREATE TABLE IF NOT EXISTS read_webhook_deliveries (
    message_id uuid NOT NULL,
    subscription_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    status text NOT NULL,
    attempts bigint NOT NULL,
    round_start bigint NOT NULL,
    next_attempt_at text,
    created_position bigint NOT NULL,
    PRIMARY KEY (message_id, subscription_id)
);
CREATE INDEX IF NOT EXISTS read_webhook_deliveries_due
    ON read_webhook_deliveries (subscription_id, next_attempt_at, created_position)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS read_webhook_deliveries_by_subscription
    ON read_webhook_deliveries (subscription_id, status);

CREATE TABLE IF NOT EXISTS read_webhook_attempts (
    id uuid PRIMARY KEY,
    message_id uuid NOT NULL,
    subscription_id uuid NOT NULL,
    organization_id uuid NOT NULL,
    attempt bigint NOT NULL,
    url bytea NOT NULL,
    status_code bigint NOT NULL,
    response bytea NOT NULL,
    timestamp text NOT NULL,
    created_position bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS read_webhook_attempts_by_message
    ON read_webhook_attempts (message_id, created_position);
CREATE INDEX IF NOT EXISTS read_webhook_attempts_by_subscription
    ON read_webhook_attempts (subscription_id, created_position);
