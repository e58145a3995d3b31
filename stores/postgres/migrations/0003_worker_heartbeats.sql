-- Worker liveness (issue #15 item 5): each worker node's latest heartbeat, one row per worker,
-- overwritten every few seconds. Heartbeats are not events: in the log they would grow it (and
-- the read model's work, and NATS) for ever; here they cost one row per worker. What is
-- decided from them (WorkerLost) is an event on the worker's stream.
CREATE TABLE syncjobs_worker_heartbeats (
    worker   text        PRIMARY KEY,
    seen_at  timestamptz NOT NULL
);
