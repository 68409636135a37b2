-- The migration ledger and dataset target tables.

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

-- name: table_columns
-- A table's column names, to check a dataset's target table.
SELECT column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %(table)s;

-- name: create_target_table
-- A dataset's target table (psycopg.sql template: {table}, {columns}, {index}, {key}).
-- key_hash leads the dedup index so hash-range chunks write to one region of it.
CREATE TABLE IF NOT EXISTS {table} (
    target_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_hash        bigint NOT NULL,
    {columns},
    imported_batch  uuid,
    imported_line   integer,
    imported_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} (key_hash, {key});
