-- Every change of a batch gets the next revision and is announced on the channel
-- importq_jobs (the batch's id), at its commit: the API's event streams
-- (GET /api/v1/jobs/{id}/events) follow the channel, in every process, and number their
-- events by revision. Two changes of one batch are serialized by its row lock, so
-- revisions only grow.
ALTER TABLE batches ADD COLUMN revision bigint NOT NULL DEFAULT 0;

CREATE FUNCTION importq_announce_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.revision := OLD.revision + 1;
    PERFORM pg_notify('importq_jobs', NEW.id::text);
    RETURN NEW;
END $$;

CREATE TRIGGER batches_announce BEFORE UPDATE ON batches
    FOR EACH ROW EXECUTE FUNCTION importq_announce_batch();
