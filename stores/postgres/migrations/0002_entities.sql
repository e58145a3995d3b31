-- The destination (issue #14 item 4): the entities syncs write, when the event store is
-- PostgreSQL. See src/destination.rs for how writes use these tables.

-- One row per (source connection, entity id). `entity_id` sorts by bytes (COLLATE "C"):
-- writers lock rows in that order, the order Rust sorts strings in, so that two writers of
-- overlapping ids (and a delete scanning this index) take their row locks in one order and
-- do not deadlock.
CREATE TABLE syncjobs_entities (
    source_connection_id  uuid        NOT NULL,
    entity_id             text        COLLATE "C" NOT NULL,
    entity_type           text        NOT NULL,
    -- Lowercase hex SHA-256 of the type and the canonical content: equal hash, same entity.
    hash                  text        NOT NULL,
    content               text        NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (source_connection_id, entity_id)
);

-- What each write did, one row per write transaction, inserted by the transaction that made
-- the writes: a job's counts are the sum of its rows, so they are exactly what was durably
-- written. Rows are only ever inserted, so concurrent writers of one job never wait on a
-- shared counter row (one per job would serialise its workers' commits).
CREATE TABLE syncjobs_entity_writes (
    job_id    uuid   NOT NULL,
    inserted  bigint NOT NULL,
    updated   bigint NOT NULL,
    kept      bigint NOT NULL,
    deleted   bigint NOT NULL,
    failed    bigint NOT NULL
);
CREATE INDEX syncjobs_entity_writes_job ON syncjobs_entity_writes (job_id);
