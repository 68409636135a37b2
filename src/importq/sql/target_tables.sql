-- Dataset target tables: the table a dataset's rows are imported into.

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
