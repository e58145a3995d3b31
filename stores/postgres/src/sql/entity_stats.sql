SELECT entity_type, count(*), max(updated_at) FROM syncjobs_entities
WHERE source_connection_id = $1 GROUP BY entity_type
