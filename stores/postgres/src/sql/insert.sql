-- A whole batch in one statement: one array per column, one element per event.
INSERT INTO syncjobs_events (position, stream_id, version, event_id, event_type,
    schema_version, data, recorded_at_ns, causation_id, correlation_id, caused_by)
SELECT p, s, v, e, t, sv, d::json, r, c1, c2, cb
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::integer[],
    $7::text[], $8::bigint[], $9::uuid[], $10::uuid[], $11::text[])
    AS u(p, s, v, e, t, sv, d, r, c1, c2, cb)
