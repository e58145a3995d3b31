-- Deletes up to $2 entities of source connection $1: a purge is a loop of these, so that no
-- transaction runs (and holds row locks) for long. The batch is picked in key order, an
-- index scan of the connection's own range however large the table.
DELETE FROM syncjobs_entities
WHERE source_connection_id = $1 AND entity_id IN (
    SELECT entity_id FROM syncjobs_entities WHERE source_connection_id = $1
    ORDER BY entity_id LIMIT $2
)
