-- The embedded event log: one row per event, never updated, never deleted.
-- global_position is the rowid: SQLite assigns max+1 inside the single write transaction,
-- so positions are dense and follow commit order.
CREATE TABLE IF NOT EXISTS events (
    global_position INTEGER PRIMARY KEY,
    stream_id       TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    -- RFC 3339 with nanoseconds, UTC: exact round trip, and sorts as text.
    recorded_at     TEXT    NOT NULL,
    causation_id    TEXT,
    correlation_id  TEXT,
    caused_by       TEXT    NOT NULL,
    -- The writer checks expected versions itself; this is the last line of defence
    -- (another process writing the same file, a bug in the version cache).
    UNIQUE (stream_id, version)
);
