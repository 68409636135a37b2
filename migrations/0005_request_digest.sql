-- What an upload with an Idempotency-Key asked for (SHA-256 of the dataset, the options
-- and the body), so a retry is told apart from a different upload reusing the key.
-- NULL for batches created without a key, or before this column existed.
ALTER TABLE batches ADD COLUMN request_digest bytea;
