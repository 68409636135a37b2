-- An undo is a batch of its own (type undo; undo_of: the batch it undoes) whose chunks
-- take back what that batch's chunks wrote: they delete its inserted rows (deleted) and
-- restore its updated ones (restored). The undone batch ends undone (undone_by: its
-- undo), and is undone once at most.
ALTER TABLE batches
    ADD COLUMN type text NOT NULL DEFAULT 'import' CHECK (type IN ('import', 'undo')),
    ADD COLUMN undo_of uuid REFERENCES batches (id),
    ADD COLUMN undone_by uuid REFERENCES batches (id),
    ADD COLUMN deleted integer NOT NULL DEFAULT 0,
    ADD COLUMN restored integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT batches_undo_check CHECK ((type = 'undo') = (undo_of IS NOT NULL));
CREATE UNIQUE INDEX batches_one_undo ON batches (undo_of) WHERE undo_of IS NOT NULL;

ALTER TABLE batches DROP CONSTRAINT batches_successes_check;
ALTER TABLE batches ADD CONSTRAINT batches_successes_check
    CHECK (inserted + updated + unchanged + deleted + restored = successes) NOT VALID;
ALTER TABLE batches VALIDATE CONSTRAINT batches_successes_check;

ALTER TABLE batches DROP CONSTRAINT batches_status_check;
ALTER TABLE batches ADD CONSTRAINT batches_status_check
    CHECK (status IN ('pending', 'active', 'aggregating', 'completed', 'failed', 'cancelled',
                      'undone')) NOT VALID;
ALTER TABLE batches VALIDATE CONSTRAINT batches_status_check;
