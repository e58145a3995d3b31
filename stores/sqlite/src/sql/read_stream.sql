SELECT global_position, stream_id, version, event_id, event_type, schema_version, data,
       recorded_at, causation_id, correlation_id, caused_by
FROM events
WHERE stream_id = ?1 AND version > ?2
ORDER BY version
