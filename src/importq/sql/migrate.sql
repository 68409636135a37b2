-- The migration ledger: which of importq's and procrastinate's migrations are applied.

-- name: create_ledger
-- The table that records applied migrations (importq's and procrastinate's).
CREATE TABLE IF NOT EXISTS importq_migrations (
    name        text PRIMARY KEY,
    version     text,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: lock_migrations
-- Serialize concurrent `migrate` runs (serve and worker starting together).
SELECT pg_advisory_xact_lock(hashtext('importq migrate'));

-- name: applied_migrations
-- What has been applied, with versions.
SELECT name, version FROM importq_migrations;

-- name: record_migration
-- Record (or move forward) one applied migration.
INSERT INTO importq_migrations (name, version) VALUES (%(name)s, %(version)s)
ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, applied_at = now();

-- name: procrastinate_installed
-- Whether procrastinate's schema exists already (installed before the ledger knew).
SELECT to_regclass('procrastinate_jobs') IS NOT NULL;
