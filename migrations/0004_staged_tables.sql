-- Staged rows move from the shared `staged_rows` table to one table per batch in the
-- `importq_staging` schema (created by staging, dropped by the purge): a clean CSV file
-- can then be COPYed straight into it, rows are read by column, and a batch's staging
-- goes away with one DROP. Report records are formatted in SQL by the chunk statement.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM batches WHERE status IN ('pending', 'active', 'aggregating')) THEN
        RAISE EXCEPTION 'batches are in flight: let them finish before this upgrade';
    END IF;
END
$$;
DROP TABLE staged_rows;
-- Row results move to one table per batch too (importq_staging.r_<batch id hex>): a
-- chunk's results land in line order of hash, not of line, and an index on the line
-- made each insert touch a random page (it was half the cost of a chunk); a batch's
-- results now go with one DROP at the purge as well.
DROP TABLE row_results;
CREATE SCHEMA importq_staging;

-- Surrounding whitespace trimmed, as Python's str.strip() trims it (every character for
-- which str.isspace() is true); otherwise exact. Dedup keys are compared in this form.
CREATE FUNCTION importq_trim(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN btrim(value, E'\u0009\u000a\u000b\u000c\u000d\u001c\u001d\u001e\u001f\u0020\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000');

-- A report cell as a spreadsheet may safely open it: text a spreadsheet would run as a
-- formula (it starts with = + - @ TAB or CR) gets a leading ', except numbers in numeric
-- columns, which stay numbers; then RFC 4180 quoting (a cell holding a quote, comma, CR
-- or LF is quoted, its quotes doubled). NULL prints as an empty cell.
-- One expression, so PostgreSQL inlines it into the statement that calls it; call it
-- with a column, not an expression: a function whose argument is costly and used more
-- than once is not inlined, and a call per cell costs ten times as much.
CREATE FUNCTION importq_report_cell(value text, is_numeric boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN value IS NULL THEN ''
    WHEN strpos(value, '"') > 0 OR strpos(value, ',') > 0
        OR strpos(value, E'\n') > 0 OR strpos(value, E'\r') > 0
        THEN '"' || CASE
            WHEN left(value, 1) IN ('=', '+', '-', '@', E'\t', E'\r')
                AND NOT (is_numeric AND importq_trim(value)
                    ~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$')
            THEN '''' ELSE '' END || replace(value, '"', '""') || '"'
    WHEN left(value, 1) IN ('=', '+', '-', '@', E'\t', E'\r')
        AND NOT (is_numeric AND importq_trim(value)
            ~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$')
        THEN '''' || value
    ELSE value
END;
