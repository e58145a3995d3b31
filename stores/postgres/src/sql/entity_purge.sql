-- Deletes up to $2 entities of source connection $1: a purge is a loop of these, so that no
-- transaction runs (and holds row locks) for long.
DELETE FROM syncjobs_entities
WHERE source_connection_id = $1 AND entity_id IN (
    SELECT entity_id FROM syncjobs_entities WHERE source_connection_id = $1 LIMIT $2
)
