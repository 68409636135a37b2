-- Published dataset definitions (importq.pipeline.dataset_versions).

-- name: current_versions
-- Each dataset's current (latest) version number.
SELECT dataset, max(version) FROM dataset_versions GROUP BY dataset ORDER BY dataset;

-- name: current_version
-- One dataset's current version number (NULL: it was never published).
SELECT max(version) FROM dataset_versions WHERE dataset = %(dataset)s;

-- name: dataset_definition
-- One version's definition.
SELECT definition FROM dataset_versions WHERE dataset = %(dataset)s AND version = %(version)s;

-- name: lock_dataset
-- The dataset's lock, held to publish a version of it (exclusive: publishing waits for
-- stagings, and stagings for it), and its table's (two new datasets never claim one
-- table at once), until the transaction ends. Waiting ends after lock_timeout, so that
-- a long staging does not hold every new upload behind a queued publish.
SELECT set_config('lock_timeout', '10s', true),
       pg_advisory_xact_lock(1768189553, hashtext(%(dataset)s)),
       pg_advisory_xact_lock(1768189554, hashtext(%(table)s)),
       set_config('lock_timeout', '0', true);

-- name: share_dataset
-- The dataset's lock, shared: held by a transaction staging a batch, so that the version
-- it records is still the current one when it commits.
SELECT pg_advisory_xact_lock_shared(1768189553, hashtext(%(dataset)s));

-- name: latest_version
-- The dataset's current version, its definition and the digest of the latest version
-- the datasets file %(source)s published (under the dataset's lock).
SELECT v.version, v.definition,
       (SELECT f.source_digest FROM dataset_versions f
        WHERE f.dataset = v.dataset AND f.source = %(source)s
        ORDER BY f.version DESC LIMIT 1)
FROM dataset_versions v
WHERE v.dataset = %(dataset)s
ORDER BY v.version DESC
LIMIT 1;

-- name: insert_dataset_version
-- A new version (under the dataset's lock).
INSERT INTO dataset_versions (dataset, version, definition, source, source_digest,
                              published_by)
VALUES (%(dataset)s, %(version)s, %(definition)s, %(source)s, %(source_digest)s,
        %(published_by)s);

-- name: unfinished_batches_of_dataset
-- How many of the dataset's batches are still being processed.
SELECT count(*) FROM batches
WHERE dataset = %(dataset)s AND status IN ('pending', 'active', 'aggregating');

-- name: target_has_rows
-- Whether a target table holds a row (template {table}).
SELECT EXISTS (SELECT FROM {table});

-- name: add_target_column
-- A column the new version adds (template {table}, {column}).
ALTER TABLE {table} ADD COLUMN {column};

-- name: target_column_types
-- A target table's columns and their types, as format_type names them.
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped;

-- name: column_has_nulls
-- Whether a stored row has no value in a column (template {table}, {field}).
SELECT EXISTS (SELECT FROM {table} WHERE {field} IS NULL);

-- name: distinct_stored_values
-- A column's distinct stored values as text, for the new type's converter (template
-- {table}, {field}).
SELECT DISTINCT {field}::text FROM {table} WHERE {field} IS NOT NULL;

-- name: evolution_settings
-- Publishing's casts read times in UTC, as the row rules and the chunks do.
SELECT set_config('TimeZone', 'UTC', true);

-- name: retype_target_column
-- A column whose type the new version changes, each stored value cast from its text as
-- an upload's cell is ({value}); every one passed the new column's converter first
-- (template {table}, {field}, {type}).
ALTER TABLE {table} ALTER COLUMN {field} TYPE {type} USING {value};

-- name: other_datasets_of_table
-- The other datasets whose versions write to a table.
SELECT DISTINCT dataset FROM dataset_versions
WHERE dataset <> %(dataset)s AND coalesce(definition ->> 'table', dataset) = %(table)s;
