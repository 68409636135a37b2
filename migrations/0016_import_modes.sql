-- What an import does with a row whose key is stored: insert (a duplicate, "already
-- exists"), upsert (update it; insert a new key) or update-only (update it; a new key
-- fails, "not found"). A success is inserted, updated or unchanged: the three counters
-- add up to successes. Earlier batches only inserted.
ALTER TABLE batches
    ADD COLUMN mode text NOT NULL DEFAULT 'insert'
        CHECK (mode IN ('insert', 'upsert', 'update-only')),
    ADD COLUMN inserted integer NOT NULL DEFAULT 0,
    ADD COLUMN updated integer NOT NULL DEFAULT 0,
    ADD COLUMN unchanged integer NOT NULL DEFAULT 0;
UPDATE batches SET inserted = successes WHERE successes > 0;
ALTER TABLE batches ADD CONSTRAINT batches_successes_check
    CHECK (inserted + updated + unchanged = successes) NOT VALID;
ALTER TABLE batches VALIDATE CONSTRAINT batches_successes_check;

-- A batch's row results keep a success's kind as its outcome (an undo's: deleted,
-- restored), and the chunk that made them, so that an undo finds a chunk's inserted and
-- updated lines. Results tables of
-- batches staged before this migration take the new outcomes and column too.
DO $$
DECLARE
    results regclass;
BEGIN
    FOR results IN
        SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'importq_staging' AND c.relname LIKE 'r\_%' AND c.relkind = 'r'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I, ADD COLUMN chunk_no integer',
                       results, (SELECT conname FROM pg_constraint
                                 WHERE conrelid = results AND contype = 'c' LIMIT 1));
        EXECUTE format('ALTER TABLE %s ADD CHECK (outcome IN (%L, %L, %L, %L, %L, %L, %L, %L))',
                       results, 'success', 'inserted', 'updated', 'unchanged', 'deleted',
                       'restored', 'duplicate', 'failure');
    END LOOP;
END $$;
