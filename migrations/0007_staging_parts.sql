-- An upload big enough is COPYed by two connections at once, each into a part of its
-- staged table (importq_staging.b_<batch id hex>_<n>); the second part is committed
-- before its batch is, and listed here until the batch's transaction takes it in. A
-- part still listed long after (its batch failed to stage, or its process died) is
-- dropped by the purge.
CREATE TABLE staging_parts (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
