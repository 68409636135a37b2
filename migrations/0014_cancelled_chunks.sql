-- A chunk a cancel kept from running is cancelled: todo → cancelled, with no row results
-- of its own. The one aggregation reports its staged rows as failures ("not imported:
-- the import was cancelled"), so a cancel settles any number of chunks in one statement.
-- NOT VALID, then validated: the scan of every chunk takes no lock that stops writers.
ALTER TABLE chunks DROP CONSTRAINT chunks_status_check;
ALTER TABLE chunks ADD CONSTRAINT chunks_status_check
    CHECK (status IN ('todo', 'done', 'failed', 'cancelled')) NOT VALID;
ALTER TABLE chunks VALIDATE CONSTRAINT chunks_status_check;

-- The cells of a ragged row past the header, each as importq_report_cell prints a text,
-- each after a comma. A function rather than a subquery in the record: a subquery over
-- a row's cells would keep the whole record out of a parallel query's workers.
CREATE FUNCTION importq_report_extra(extra text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce((SELECT string_agg(',' || importq_report_cell(x, false), '' ORDER BY n)
                 FROM unnest(extra) WITH ORDINALITY AS e(x, n)), '');
