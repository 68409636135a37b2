-- A batch can be cancelled while it runs: cancelled_at is when it was asked. The batch
-- stays active until its chunks are settled (the ones not started as "not imported");
-- the one aggregation then makes it cancelled.
ALTER TABLE batches ADD COLUMN cancelled_at timestamptz;
-- How many chunks the cancel kept from running: only then does the batch end cancelled.
ALTER TABLE batches ADD COLUMN cancelled_chunks integer NOT NULL DEFAULT 0;
