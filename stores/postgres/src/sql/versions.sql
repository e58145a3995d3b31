-- Under the append lock: the log's head (stream NULL), then the current version of each
-- stream in $1 that has events. One round trip for a whole batch, one index probe per
-- stream: each stream's last version is read backwards from the unique (stream, version)
-- index (a `max(version) ... GROUP BY` would read every version of every stream, and a
-- long job's stream holds thousands of progress events).
SELECT NULL::text, coalesce((SELECT max(position) FROM syncjobs_events), 0)
UNION ALL
SELECT s, v.version
FROM unnest($1::text[]) AS s
CROSS JOIN LATERAL (
    SELECT version FROM syncjobs_events WHERE stream_id = s ORDER BY version DESC LIMIT 1
) AS v
