SELECT position, stream_id, version, event_id, event_type, schema_version, data::text,
    recorded_at_ns, causation_id, correlation_id, caused_by
FROM syncjobs_events WHERE stream_id = $1 AND version > $2 ORDER BY version
