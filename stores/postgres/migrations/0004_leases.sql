-- Leases (issue #15 item 6, issue #17): one row per duty that one node performs at a time
-- (the NATS relay, the webhook dispatcher). The lease itself is a session advisory lock held
-- on a dedicated connection (src/lease.rs); this row only says who took it last, and keeps
-- the state the next holder resumes from (the relay's cursor), written through the holder's
-- connection while it holds the lock.
CREATE TABLE syncjobs_leases (
    duty      text        PRIMARY KEY,
    holder    text        NOT NULL,
    taken_at  timestamptz NOT NULL,
    state     text,
    saved_at  timestamptz
);
