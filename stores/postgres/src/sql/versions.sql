-- Under the append lock: the log's head (stream NULL), then the current version of each
-- stream in $1 that has events. One round trip for a whole batch.
SELECT NULL::text, coalesce(max(position), 0) FROM syncjobs_events
UNION ALL
SELECT stream_id, max(version) FROM syncjobs_events WHERE stream_id = ANY($1) GROUP BY stream_id
