-- Published dataset definitions (importq.pipeline.dataset_versions).

-- name: current_versions
-- Each dataset's current (latest) version number.
SELECT dataset, max(version) FROM dataset_versions GROUP BY dataset ORDER BY dataset;

-- name: dataset_definition
-- One version's definition.
SELECT definition FROM dataset_versions WHERE dataset = %(dataset)s AND version = %(version)s;

-- name: lock_dataset
-- The dataset's lock, held to publish a version of it (exclusive: publishing waits for
-- stagings, and stagings for it) until the transaction ends.
SELECT pg_advisory_xact_lock(1768189553, hashtext(%(dataset)s));

-- name: share_dataset
-- The dataset's lock, shared: held by a transaction staging a batch, so that the version
-- it records is still the current one when it commits.
SELECT pg_advisory_xact_lock_shared(1768189553, hashtext(%(dataset)s));

-- name: latest_version
-- The dataset's current version, its definition and the digest of the latest version a
-- datasets file published (under the dataset's lock).
SELECT v.version, v.definition,
       (SELECT f.file_digest FROM dataset_versions f
        WHERE f.dataset = v.dataset AND f.file_digest IS NOT NULL
        ORDER BY f.version DESC LIMIT 1)
FROM dataset_versions v
WHERE v.dataset = %(dataset)s
ORDER BY v.version DESC
LIMIT 1;

-- name: insert_dataset_version
-- A new version (under the dataset's lock).
INSERT INTO dataset_versions (dataset, version, definition, file_digest, published_by)
VALUES (%(dataset)s, %(version)s, %(definition)s, %(file_digest)s, %(published_by)s);

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

-- name: retype_target_column
-- A column whose type the new version changes: each stored value is read as the new type
-- from its text, as an upload's would be, so a value that does not fit fails the
-- statement (template {table}, {field}, {type}).
ALTER TABLE {table} ALTER COLUMN {field} TYPE {type} USING {field}::text::{type};

-- name: other_datasets_of_table
-- The other datasets whose versions write to a table.
SELECT DISTINCT dataset FROM dataset_versions
WHERE dataset <> %(dataset)s AND coalesce(definition ->> 'table', dataset) = %(table)s;
