-- Which migrations (migrations/NNNN_*.sql) this database has, applied once each.
CREATE TABLE IF NOT EXISTS syncjobs_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
