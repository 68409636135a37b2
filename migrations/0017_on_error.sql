-- What a batch does about failed rows: continue (every valid row is written, as before),
-- abort (above abort_percent % of its rows failed, nothing is written) or atomic (one
-- failed row and nothing is written). A batch that is not continue checks every chunk
-- first, writing nothing (written_at stays NULL), then writes them all in one
-- transaction (written_at set) or, when its failures are too many, is aborted.
ALTER TABLE batches
    ADD COLUMN on_error text NOT NULL DEFAULT 'continue'
        CHECK (on_error IN ('continue', 'abort', 'atomic')),
    ADD COLUMN abort_percent numeric CHECK (abort_percent BETWEEN 0 AND 100),
    ADD COLUMN aborted_at timestamptz,
    ADD COLUMN written_at timestamptz,
    ADD CHECK ((on_error = 'abort') = (abort_percent IS NOT NULL));
