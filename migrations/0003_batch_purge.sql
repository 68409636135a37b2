-- When the periodic clean-up removed a finished batch's stored files (reports, upload).
ALTER TABLE batches ADD COLUMN purged_at timestamptz;
CREATE INDEX batches_to_purge ON batches (completed_at) WHERE purged_at IS NULL;
