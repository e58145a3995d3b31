-- A page of one source connection's entity ids after $2, in key order. $3 page size.
SELECT entity_id FROM syncjobs_entities
WHERE source_connection_id = $1 AND entity_id > $2
ORDER BY entity_id LIMIT $3
