-- Datasets are versioned data: each published definition is a row, never changed after.
-- A batch records the version that judged it, how its upload was read (a header
-- mapping, a decimal comma, a date format; the encoding, delimiter and sheet asked for)
-- and, for a rerun, the batch whose upload it runs again (the first: a rerun's rerun
-- names the batch the upload came with). Batches from before versions were judged by the built-in or configured
-- definition that `importq migrate` now publishes as version 1.
CREATE TABLE dataset_versions (
    dataset text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    -- The definition as TOML gives it, as JSON (importq.rules.datasets builds it).
    definition jsonb NOT NULL,
    -- Which datasets file published it (builtin: the built-in one; file:
    -- IMPORTQ_DATASETS_FILE; NULL: the API or the CLI) and the definition's SHA-256: a
    -- file publishes a definition once, so that a restart never publishes an older one
    -- again, nor one file's over another's.
    source text CHECK (source IN ('builtin', 'file')),
    source_digest text CHECK ((source IS NULL) = (source_digest IS NULL)),
    published_by bigint REFERENCES users (id),
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, version)
);

ALTER TABLE batches
    ADD COLUMN dataset_version integer NOT NULL DEFAULT 1,
    ADD COLUMN mapping jsonb,
    ADD COLUMN decimal_mark text CHECK (decimal_mark IN ('dot', 'comma')),
    ADD COLUMN date_format text,
    ADD COLUMN file_options jsonb,
    ADD COLUMN rerun_of uuid REFERENCES batches (id);
ALTER TABLE batches ALTER COLUMN dataset_version DROP DEFAULT;
CREATE INDEX batches_rerun_of ON batches (rerun_of) WHERE rerun_of IS NOT NULL;

-- A user's saved header mappings, offered again for files with the same header.
CREATE TABLE mappings (
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    dataset text NOT NULL,
    -- The normalised header it was saved for (importq.rules.datasets.normalise_header_name).
    header text[] NOT NULL,
    -- Upload header (as written) -> dataset column.
    mapping jsonb NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, name)
);
