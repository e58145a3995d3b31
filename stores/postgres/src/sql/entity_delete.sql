-- Deletes the named entities of one source connection and counts them as the job's deletes,
-- in one statement. $1 source connection, $2 job, $3 entity ids.
WITH gone AS (
    DELETE FROM syncjobs_entities
    WHERE source_connection_id = $1 AND entity_id = ANY($3::text[])
    RETURNING 1
), counted AS (
    INSERT INTO syncjobs_entity_writes (job_id, inserted, updated, kept, deleted, failed)
    SELECT $2, 0, 0, 0, count(*), 0 FROM gone
)
SELECT count(*) FROM gone
