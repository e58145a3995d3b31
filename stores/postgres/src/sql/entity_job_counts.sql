SELECT coalesce(sum(inserted), 0)::bigint, coalesce(sum(updated), 0)::bigint,
    coalesce(sum(kept), 0)::bigint, coalesce(sum(deleted), 0)::bigint,
    coalesce(sum(failed), 0)::bigint
FROM syncjobs_entity_writes WHERE job_id = $1
