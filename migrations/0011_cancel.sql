-- A batch can be cancelled while it runs: cancelled_at is when it was asked. The batch
-- stays active until its chunks are settled (the ones not started as "not imported");
-- the one aggregation then makes it cancelled.
ALTER TABLE batches ADD COLUMN cancelled_at timestamptz;
