-- One destination write, in one statement (one round trip, one implicit transaction): the
-- records as arrays sorted by entity_id (byte order, so concurrent writers lock rows in one
-- order), upserted; a row comes back only when it was inserted (xmax = 0: a fresh tuple) or
-- updated (its hash differed: the conflict's row lock leaves our xid in the new tuple's
-- xmax); a record with no row back was kept. The job's counts go in with the same statement.
-- $1 source connection, $2 job, $3..$6 ids, types, hashes, contents, $7 failed.
WITH input AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
        WITH ORDINALITY AS i(entity_id, entity_type, hash, content, ord)
), written AS (
    INSERT INTO syncjobs_entities AS e
        (source_connection_id, entity_id, entity_type, hash, content, created_at, updated_at)
    SELECT $1, entity_id, entity_type, hash, content, now(), now() FROM input ORDER BY ord
    ON CONFLICT (source_connection_id, entity_id) DO UPDATE
        SET entity_type = excluded.entity_type, hash = excluded.hash,
            content = excluded.content, updated_at = excluded.updated_at
        WHERE e.hash <> excluded.hash
    RETURNING e.entity_id, e.xmax = 0 AS inserted
), counted AS (
    INSERT INTO syncjobs_entity_writes (job_id, inserted, updated, kept, deleted, failed)
    SELECT $2, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted),
        cardinality($3::text[]) - count(*), 0, $7
    FROM written
)
SELECT i.ord, w.inserted FROM written w JOIN input i USING (entity_id)
