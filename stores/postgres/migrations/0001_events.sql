-- The event log: one row per event, never updated, never deleted.
-- `position` is assigned by the appender while it holds the append lock (see lib.rs), as
-- head + 1: positions are dense and follow commit order, so a reader that has seen
-- position p has seen every position below it. No sequence: a sequence hands out numbers
-- at insert, not at commit, and a reader ordered by it can skip a late-committing event.
CREATE TABLE syncjobs_events (
    position        bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    -- `json`, not `jsonb`: the body is kept exactly as it was written.
    data            json        NOT NULL,
    -- Nanoseconds since the Unix epoch, UTC: `timestamptz` keeps only microseconds, and an
    -- event must read back exactly as it was appended.
    recorded_at_ns  bigint      NOT NULL,
    causation_id    uuid,
    correlation_id  uuid,
    caused_by       text        NOT NULL,
    -- The appender checks expected versions under the lock; this is the last line of
    -- defence (a writer that does not take the lock), and it serves read_stream.
    CONSTRAINT syncjobs_events_stream_version UNIQUE (stream_id, version)
);
