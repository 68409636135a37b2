-- Chunks and their rows: staging, claiming, results.
-- A chunk goes todo → done or todo → failed, once; both are final.

-- name: insert_chunks
-- The chunks of a new batch, from parallel arrays.
INSERT INTO chunks (batch_id, chunk_no, hash_from, hash_to, row_count)
SELECT %(batch_id)s, no, hash_from, hash_to, row_count
FROM unnest(%(chunk_nos)s::int[], %(hash_froms)s::bigint[], %(hash_tos)s::bigint[],
            %(row_counts)s::int[]) AS c(no, hash_from, hash_to, row_count);

-- name: lock_chunk
-- Lock a chunk for its transaction; a second delivery of the same job waits here and
-- then sees the chunk is no longer todo.
SELECT c.chunk_no, c.status, c.hash_from, c.hash_to, c.attempts, b.dataset, b.header, b.status AS batch_status
FROM chunks c JOIN batches b ON b.id = c.batch_id
WHERE c.batch_id = %(batch_id)s AND c.chunk_no = %(chunk_no)s
FOR UPDATE OF c;

-- name: chunk_settings
-- For the chunk's transaction: timestamps without an offset are UTC, as the row rules
-- read them; no merge joins; no JIT. The planner has no statistics on the chunk's
-- temporary tables nor on what a statement inserts, guesses a tenth of their rows, and
-- then joins the chunk's rows to the inserted ones by sorting both on the line; the hash
-- joins it takes instead need no sort (settle_chunk of a 5,000-row chunk: 34 → 31.7 ms).
-- A server with JIT compiles a big chunk's statements (costed past jit_above_cost from
-- some tens of thousands of rows): settle_chunk's many expressions take ~2 s to compile
-- and save far less (a 100,000-row chunk on PostgreSQL 15: 2.85 s → 0.88 s without).
SELECT set_config('TimeZone', 'UTC', true), set_config('enable_mergejoin', 'off', true),
       set_config('jit', 'off', true);

-- name: drop_chunk_tables
-- The temporary tables of an earlier chunk, when this transaction is nested in one that
-- processed it (a savepoint's commit does not drop them).
DROP TABLE IF EXISTS importq_chunk, importq_failures;

-- name: create_chunk
-- A chunk's rows, with the cells the row rules read trimmed once (t<position>), for the
-- statements below; gone at commit (template {staged}, {joined}: the cells read joined
-- by U+0001, {trimmed}: per cell read "CASE WHEN padded THEN importq_trim(c<p>) ELSE
-- c<p> END AS t<p>", {originals}: per cell read "CASE WHEN padded THEN c<p> END AS
-- o<p>", and every other cell as c<p>). A cell read is kept as uploaded only in a row
-- that was trimmed: in any other, t<p> is the same text (importq.ingest.staged_table.original).
-- The columns every statement reads come first: a row is decoded from its start up to
-- the last column a statement needs.
-- Most rows have no cell to trim, and one test of the whole row costs less than
-- trimming each cell: "padded" is true when some cell might start or end with
-- whitespace (a character importq_trim trims, next to a boundary of the joined cells;
-- a U+0001 inside a cell can only make a row trimmed for nothing).
-- OFFSET 0 keeps the test one per row rather than copied into each cell's CASE.
CREATE TEMP TABLE importq_chunk ON COMMIT DROP AS
SELECT line, key_hash, problem, {trimmed}, padded, {originals}, extra
FROM (
    SELECT s.*,
           {joined} ~ E'(^|\x01)[\t-\r\x1c- \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]|[\t-\r\x1c- \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](\x01|$)'
               AS padded
    FROM {staged} s
    WHERE key_hash >= %(hash_from)s AND (%(hash_to)s::bigint IS NULL OR key_hash < %(hash_to)s)
    OFFSET 0
) s;

-- name: judged_values
-- The distinct values of one of the chunk's columns judged by value (importq.rules.sql_screen),
-- trimmed and non-empty, with its position (template {position}, {value}: t<position>);
-- the columns' queries are joined by UNION ALL (a GROUP BY each: half the cost of one
-- DISTINCT over all of them).
SELECT {position}, {value} FROM importq_chunk WHERE {value} <> '' GROUP BY {value}

-- name: suspect_rows
-- The rows of the chunk the screen does not pass, in line order: line, problem, then
-- the cells the row rules read (template {cells}, {passes}).
SELECT line, problem, {cells}
FROM importq_chunk
WHERE problem IS NOT NULL OR NOT coalesce({passes}, false)
ORDER BY line;

-- name: create_failures
-- The rows of a chunk the row rules failed, with the reason; every other row of the
-- chunk is valid. Gone at commit.
CREATE TEMP TABLE importq_failures (
    line     integer PRIMARY KEY,
    message  text NOT NULL
) ON COMMIT DROP;

-- name: copy_failures
-- Stream the failures of a slice of a chunk (binary COPY: int4, text).
COPY importq_failures (line, message) FROM STDIN (FORMAT BINARY);

-- name: add_failure
-- A valid row the target table refused: a failure with the database's reason.
INSERT INTO importq_failures (line, message) VALUES (%(line)s, %(message)s);

-- name: settle_chunk
-- All of a chunk's writes in one statement. Of its valid rows (no failure recorded),
-- the first line of each key whose key is not stored yet is inserted (DISTINCT ON over
-- the dedup index's order, then line). A valid row not inserted is a duplicate: of the
-- line inserted with its key in this statement, or, when none was, of the first such
-- row of its key (that one: "already exists"). Then every row's result with the CSV
-- record its report prints, one row of arrays per outcome and block of lines
-- (create_results_table), and the tally (each outcome's count).
-- A key another batch stores meanwhile makes the plain insert fail (unique violation):
-- the statement is then run again with {on_conflict} "ON CONFLICT DO NOTHING", which
-- costs more on every row (speculative insertion), so it is not the first try.
-- %(give_up)s set: nothing is inserted and every row is a failure with that message.
-- Template: {results}, {table}, {fields}, {values} (the dataset's columns cast from the
-- trimmed cells), {key_values} (the key columns' values), {winner_keys} ("<key field>
-- AS winner_k<i>", …), {same_key} (a chunk row c has the key of an inserted row w),
-- {to_insert} (rows_to_insert), {on_conflict}, {success_record}, {rejected_record},
-- {block} (importq.pipeline.reports.BLOCK_LINES).
WITH inserted AS (
    -- The values are cast for the rows inserted only (in the subquery's order, the dedup
    -- index's): a later row of a key is a duplicate whatever PostgreSQL makes of it.
    INSERT INTO {table} (key_hash, imported_batch, imported_line, {fields})
    SELECT key_hash, %(batch_id)s, line, {values}
    FROM ({to_insert}) AS c
    WHERE %(give_up)s::text IS NULL
    {on_conflict}
    RETURNING imported_line AS winner_line, target_id, key_hash AS winner_hash, {winner_keys}
), losers AS (
    -- Valid rows not inserted, few: the line each is a duplicate of (NULL: "already exists").
    -- They are taken first (OFFSET 0), as in rows_to_insert: the key join casts their keys.
    SELECT c.line,
           coalesce(w.winner_line,
                    nullif(min(c.line) OVER (PARTITION BY c.key_hash, {key_values}), c.line))
               AS first
    FROM (SELECT * FROM importq_chunk c
          WHERE %(give_up)s::text IS NULL
            AND NOT EXISTS (SELECT FROM importq_failures f WHERE f.line = c.line)
            AND NOT EXISTS (SELECT FROM inserted i WHERE i.winner_line = c.line)
          OFFSET 0) AS c
    LEFT JOIN inserted w ON w.winner_hash = c.key_hash AND {same_key}
), outcomes AS (
    SELECT c.*, i.target_id,
           CASE WHEN %(give_up)s::text IS NOT NULL OR f.message IS NOT NULL THEN 'failure'
                WHEN i.target_id IS NOT NULL THEN 'success'
                ELSE 'duplicate' END AS outcome,
           CASE WHEN %(give_up)s::text IS NOT NULL THEN %(give_up)s::text
                WHEN f.message IS NOT NULL THEN f.message
                WHEN i.target_id IS NOT NULL THEN NULL
                WHEN l.first IS NOT NULL THEN 'duplicate of line ' || l.first
                ELSE 'already exists' END AS message
    FROM importq_chunk c
    LEFT JOIN importq_failures f ON f.line = c.line
    LEFT JOIN inserted i ON i.winner_line = c.line
    LEFT JOIN losers l ON l.line = c.line
), gathered AS (
    -- Each outcome's rows of a block of {block} lines in arrays that list them alike (one
    -- aggregation reads them in one order). Blocks, so that an array holds no more than
    -- the report query puts in one text (its limit is a gigabyte), however many rows of
    -- one key a chunk holds. A filter per outcome rather than a GROUP BY the outcome too,
    -- which the planner would do by sorting the rows on it. OFFSET 0: the records are
    -- made before the rows are sorted into blocks, so the sort moves a record and a
    -- line rather than every cell the record is made of (a 10,000-row chunk: ~5 ms).
    SELECT array_agg(line) FILTER (WHERE outcome = 'success') AS success_lines,
           array_agg(record) FILTER (WHERE outcome = 'success') AS success_records,
           array_agg(line) FILTER (WHERE outcome = 'duplicate') AS duplicate_lines,
           array_agg(message) FILTER (WHERE outcome = 'duplicate') AS duplicate_messages,
           array_agg(record) FILTER (WHERE outcome = 'duplicate') AS duplicate_records,
           array_agg(line) FILTER (WHERE outcome = 'failure') AS failure_lines,
           array_agg(message) FILTER (WHERE outcome = 'failure') AS failure_messages,
           array_agg(record) FILTER (WHERE outcome = 'failure') AS failure_records
    FROM (SELECT line, outcome, message,
                 CASE WHEN outcome = 'success' THEN {success_record} ELSE {rejected_record} END
                     AS record
          FROM outcomes
          OFFSET 0) AS o
    GROUP BY line / {block}
), results AS (
    INSERT INTO {results} (outcome, lines, messages, records)
    SELECT r.*
    FROM gathered,
         LATERAL (VALUES ('success', success_lines, NULL, success_records),
                         ('duplicate', duplicate_lines, duplicate_messages, duplicate_records),
                         ('failure', failure_lines, failure_messages, failure_records))
             AS r(outcome, lines, messages, records)
    WHERE r.lines IS NOT NULL
    RETURNING outcome, cardinality(lines)
)
SELECT outcome, sum(cardinality)::int FROM results GROUP BY outcome;

-- name: rows_to_insert
-- The chunk's rows settle_chunk inserts, in dedup-index order: of its valid rows (no
-- failure recorded), the first line of each key not stored yet (template {order}: the
-- dedup index's order; {table}; {stored_key}: a chunk row c has the key of a stored row
-- t; %(hash_from)s, %(hash_to)s: the chunk's hash range, as in create_chunk). A fragment
-- of settle_chunk and lines_to_insert.
-- The valid rows are taken first (OFFSET 0: the planner may not move the lookups below):
-- a failed row's key may not cast to the key column's type, as the lookup casts it.
-- Each valid row's key is looked up in the table only when the table holds some row of
-- the chunk's hash range: that test reads no chunk row, so it runs once, in the same
-- snapshot as the lookups, and finds nothing exactly when all of them would. Each lookup
-- is a descent of the dedup index; a chunk of an import into an empty table makes none
-- (1M rows: the chunks ~0.5 s sooner), while one stored row in its range makes a chunk
-- look up every key, as before. Both bounds are conditions of that index, whose first
-- column is the hash (the last chunk's range has no upper bound: its end is the largest
-- hash).
SELECT DISTINCT ON ({order}) *
FROM (SELECT * FROM importq_chunk c
      WHERE NOT EXISTS (SELECT FROM importq_failures f WHERE f.line = c.line)
      OFFSET 0) AS c
WHERE NOT EXISTS (SELECT FROM {table}
                  WHERE key_hash BETWEEN %(hash_from)s::bigint
                                     AND coalesce(%(hash_to)s::bigint - 1, 9223372036854775807))
   OR NOT EXISTS (SELECT FROM {table} t WHERE t.key_hash = c.key_hash AND {stored_key})
ORDER BY {order}, line

-- name: lines_to_insert
-- The lines of the rows settle_chunk inserts, in line order (template {to_insert}).
SELECT line FROM ({to_insert}) AS c ORDER BY line;

-- name: probe_rows
-- Insert some valid rows of the chunk (in a savepoint that is rolled back): does the
-- target table accept them all? Template as settle_chunk.
INSERT INTO {table} (key_hash, imported_batch, imported_line, {fields})
SELECT key_hash, %(batch_id)s, line, {values}
FROM importq_chunk WHERE line = ANY(%(lines)s::int[])
ON CONFLICT DO NOTHING;

-- name: finish_chunk
-- todo → done | failed. Only a todo chunk moves; the error of an earlier attempt stays.
UPDATE chunks
SET status = %(status)s, error = coalesce(%(error)s, error), attempts = attempts + 1
WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s AND status = 'todo'
RETURNING chunk_no;

-- name: report_blocks
-- A batch's report records in line order, in blocks of up to {block} consecutive lines:
-- per block, the records of each outcome in line order and how many (appended block by
-- block, each report file is in line order), then how many distinct lines the block's
-- results are for: the aggregation checks that the results account for every line
-- exactly once (a line's results all fall in its block). One sort of the results, in
-- parallel where the server allows (report_plan) (template {results}, {block}).
SELECT string_agg(record, '' ORDER BY line) FILTER (WHERE outcome = 'success'),
       count(*) FILTER (WHERE outcome = 'success'),
       string_agg(record, '' ORDER BY line) FILTER (WHERE outcome = 'duplicate'),
       count(*) FILTER (WHERE outcome = 'duplicate'),
       string_agg(record, '' ORDER BY line) FILTER (WHERE outcome = 'failure'),
       count(*) FILTER (WHERE outcome = 'failure'),
       count(DISTINCT line)
FROM {results}, unnest(lines, records) AS result(line, record)
GROUP BY line / {block}
ORDER BY line / {block};

-- name: report_plan
-- For the aggregation's transaction: parallel workers for its sort, and memory to sort
-- in (each worker and the leader may use this much: a million results, ~100 MB, sort
-- in memory; bigger batches sort through temporary files). The results table is small
-- (a few hundred rows per chunk, their arrays stored apart), and the planner, which
-- guesses ten elements an array, would scan it alone: it is told that any table is
-- worth scanning in parallel and that starting the workers costs nothing (1M results:
-- 1.0 → 0.73 s).
-- It also reckons that passing a million sorted rows from the workers costs more than
-- it saves; measured, the report query takes a quarter less.
-- No JIT: on a server with it, compiling the query's expressions costs more than they
-- save (1M results on PostgreSQL 15: 1.18 → 0.87 s without).
SELECT set_config('work_mem', '192MB', true), set_config('parallel_tuple_cost', '0', true),
       set_config('parallel_setup_cost', '0', true),
       set_config('min_parallel_table_scan_size', '0', true), set_config('jit', 'off', true);

-- name: count_chunk_attempt
-- Count a failed or lost attempt, in its own transaction. Nothing happens (no row back)
-- when the chunk is finished, or locked: then another delivery of its job is at work.
UPDATE chunks c SET attempts = c.attempts + 1, error = %(error)s
FROM (SELECT batch_id, chunk_no FROM chunks
      WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s AND status = 'todo'
      FOR UPDATE SKIP LOCKED) AS free
WHERE c.batch_id = free.batch_id AND c.chunk_no = free.chunk_no
RETURNING c.attempts;

-- name: chunk_status
-- A chunk's status (todo, done, failed).
SELECT status FROM chunks WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s;
