SELECT coalesce(max(position), 0) FROM syncjobs_events
