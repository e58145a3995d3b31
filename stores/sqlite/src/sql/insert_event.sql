INSERT INTO events (
    stream_id, version, event_id, event_type, schema_version, data, recorded_at,
    causation_id, correlation_id, caused_by
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
