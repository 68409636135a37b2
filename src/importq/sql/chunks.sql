-- Chunks and their rows. A chunk goes todo → done, failed or cancelled, once; all are final.

-- name: insert_chunks
-- The chunks of a new batch, from parallel arrays.
INSERT INTO chunks (batch_id, chunk_no, hash_from, hash_to, row_count)
SELECT %(batch_id)s, no, hash_from, hash_to, row_count
FROM unnest(%(chunk_nos)s::int[], %(hash_froms)s::bigint[], %(hash_tos)s::bigint[],
            %(row_counts)s::int[]) AS c(no, hash_from, hash_to, row_count);

-- name: lock_chunk
-- Lock the chunk: a second delivery of its job waits here, then finds it no longer todo.
-- The batch's columns come from the statement's snapshot: a cancel that committed while
-- this waited on a holder that then rolled back is not seen here (batch_stopped is).
SELECT c.chunk_no, c.status, c.hash_from, c.hash_to, c.attempts, b.dataset, b.header,
       b.status AS batch_status, b.dry_run, b.mode, b.on_error, b.undo_of,
       b.dataset_version, b.mapping, b.decimal_mark, b.date_format, b.rerun_of
FROM chunks c JOIN batches b ON b.id = c.batch_id
WHERE c.batch_id = %(batch_id)s AND c.chunk_no = %(chunk_no)s
FOR UPDATE OF c;

-- name: batch_stopped
-- Whether the batch was cancelled or aborted, read after the chunk's lock (a snapshot of
-- its own).
SELECT cancelled_at IS NOT NULL OR aborted_at IS NOT NULL FROM batches
WHERE id = %(batch_id)s;

-- name: chunks_to_write
-- A checked batch's chunks, as lock_chunk gives a chunk, in chunk order (the hash order).
SELECT c.chunk_no, c.status, c.hash_from, c.hash_to, c.attempts, b.dataset, b.header,
       b.dry_run, b.mode, b.on_error, b.undo_of, b.dataset_version, b.mapping,
       b.decimal_mark, b.date_format, b.rerun_of
FROM chunks c JOIN batches b ON b.id = c.batch_id
WHERE c.batch_id = %(batch_id)s AND c.status IN ('done', 'failed')
ORDER BY c.chunk_no;

-- name: checked_batch_to_write
-- A checked batch about to be written, locked for the writing transaction: no row when
-- another run of its aggregation wrote or held it already.
SELECT FROM batches
WHERE id = %(batch_id)s AND status = 'aggregating' AND written_at IS NULL
  AND aborted_at IS NULL
FOR UPDATE;

-- name: lock_batch_keys
-- Update modes, writing a checked batch: every stored row whose key hash is one of the
-- batch's staged rows' ({staged}), locked at once in the dedup index's order
-- ({stored_order}), before any chunk inserts: a transaction that writes many chunks then
-- never waits for a lock while it holds an insert. Template {table}.
SELECT FROM {table} t
WHERE t.key_hash IN (SELECT key_hash FROM {staged})
ORDER BY {stored_order}
FOR UPDATE OF t;

-- name: clear_results
-- A checked batch's results, gone before its chunks are written and recorded again
-- (template {results}); in the writing transaction.
TRUNCATE {results};

-- name: chunk_settings
-- Chunk transaction settings: UTC as the row rules read times; no merge joins; no JIT.
-- With no statistics on the temporary tables the planner merge-joins by sorting both
-- sides; a hash join needs no sort. JIT compiles big statements for longer than it saves.
SELECT set_config('TimeZone', 'UTC', true), set_config('enable_mergejoin', 'off', true),
       set_config('jit', 'off', true);

-- name: drop_chunk_tables
-- An enclosing transaction's earlier chunk tables: a savepoint's commit does not drop them.
DROP TABLE IF EXISTS importq_chunk, importq_failures, importq_dry_run, importq_stored,
    importq_planned, importq_undo;

-- name: create_dry_run_table
-- What a dry run's chunk inserts into instead of the target: the target's columns,
-- defaults, identity and CHECK and NOT NULL constraints, so that a row the target would
-- refuse is refused here too; dropped at commit. Template: {table}.
CREATE TEMP TABLE importq_dry_run
    (LIKE {table} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS)
    ON COMMIT DROP;

-- name: create_chunk
-- A chunk's rows with the cells the row rules read trimmed once (t<p>); dropped at commit.
-- Template: {staged}; {joined}: the read cells joined by U+0001; {trimmed}: t<p>, trimmed
-- if padded; {originals}: o<p>, the uploaded cell if padded (else t<p> is it); others c<p>.
-- Columns all statements read come first: a row is decoded only up to the last one needed.
-- padded: some cell may start or end with whitespace; one test a row beats a trim a cell,
-- and a U+0001 inside a cell only costs a needless trim. OFFSET 0 keeps it once per row.
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
-- A value-judged column's distinct trimmed non-empty values (importq.rules.sql_screen).
-- {position}, {value}: t<position>. One per column by UNION ALL, cheaper than one DISTINCT.
SELECT {position}, {value} FROM importq_chunk WHERE {value} <> '' GROUP BY {value}

-- name: suspect_rows
-- Rows the screen does not pass, by line, with the cells the rules read ({cells}, {passes})
SELECT line, problem, {cells}
FROM importq_chunk
WHERE problem IS NOT NULL OR NOT coalesce({passes}, false)
ORDER BY line;

-- name: create_failures
-- Rows the row rules failed, with the reason (every other row is valid); dropped at commit.
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
-- All of a chunk's writes in one statement (insert mode): inserts, row results, each
-- outcome's count. Of the valid rows, the first line of each new key is inserted and the
-- key's other rows duplicate it; of a stored key, the first row "already exists", the
-- others duplicate it. A key another batch stores meanwhile fails the plain insert; only
-- then is it rerun with {on_conflict} (ON CONFLICT on the dedup key DO NOTHING), whose
-- speculative insertion slows every row.
-- %(give_up)s set: nothing is inserted and every row is a failure with that message.
-- A dry run writes to importq_dry_run ({write_to}) and keeps no id ({stored_id} NULL).
-- Template: filled by importq.pipeline.target_tables; {to_insert} is first_valid_rows of
-- the keys not stored; {results_of_outcomes} ends it.
WITH inserted AS (
    -- Only inserted rows are cast: a later row of its key is a duplicate, castable or not.
    INSERT INTO {write_to} (key_hash, imported_batch, imported_line, {fields})
    SELECT key_hash, %(batch_id)s, line, {values}
    FROM ({to_insert}) AS c
    WHERE %(give_up)s::text IS NULL
    {on_conflict}
    RETURNING imported_line AS winner_line, {stored_id} AS target_id, key_hash AS winner_hash,
              {winner_keys}
), losers AS (
    -- Valid rows not inserted. OFFSET 0 drops failed rows before the key join casts keys.
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
    SELECT c.*, i.target_id, '' AS changed_columns,
           CASE WHEN %(give_up)s::text IS NOT NULL OR f.message IS NOT NULL THEN 'failure'
                WHEN i.winner_line IS NOT NULL THEN 'inserted'
                ELSE 'duplicate' END AS outcome,
           CASE WHEN %(give_up)s::text IS NOT NULL THEN %(give_up)s::text
                WHEN f.message IS NOT NULL THEN f.message
                WHEN i.winner_line IS NOT NULL THEN NULL
                WHEN l.first IS NOT NULL THEN 'duplicate of line ' || l.first
                ELSE 'already exists' END AS message
    FROM importq_chunk c
    LEFT JOIN importq_failures f ON f.line = c.line
    LEFT JOIN inserted i ON i.winner_line = c.line
    LEFT JOIN losers l ON l.line = c.line
), {results_of_outcomes}

-- name: results_of_outcomes
-- The end of every settle statement: every row's result, from the CTE outcomes (the chunk
-- row with outcome, message, target_id and changed_columns), into the results table, and
-- the count of each outcome. Template: {success_record}, {rejected_record}, {block},
-- {results}; {arrays}: outcome_array's, for each outcome the statement can give (a
-- FILTER it never passes costs each row a test), and {outcomes}: each outcome's arrays
-- as a VALUES row (outcome, lines, messages, records).
gathered AS (
    -- Arrays per outcome and block of {block} lines, so a report text stays under 1 GB.
    -- A FILTER per outcome, since a GROUP BY outcome would be planned as a sort on it.
    -- OFFSET 0 makes the records before the block sort: it moves a record, not its cells.
    SELECT {arrays}
    FROM (SELECT line, outcome, message,
                 CASE WHEN outcome IN ('duplicate', 'failure') THEN {rejected_record}
                      ELSE {success_record} END AS record
          FROM outcomes
          OFFSET 0) AS o
    GROUP BY line / {block}
), results AS (
    INSERT INTO {results} (outcome, chunk_no, lines, messages, records)
    SELECT r.outcome, %(chunk_no)s, r.lines, r.messages, r.records
    FROM gathered,
         LATERAL (VALUES {outcomes}) AS r(outcome, lines, messages, records)
    WHERE r.lines IS NOT NULL
    RETURNING outcome, cardinality(lines)
)
SELECT outcome, sum(cardinality)::int FROM results GROUP BY outcome;

-- name: outcome_array
-- One of results_of_outcomes' arrays: {value} (line, message or record) of the rows whose
-- outcome is {outcome}, named {name}.
array_agg({value}) FILTER (WHERE outcome = {outcome}) AS {name}

-- name: create_stored
-- Update modes: the stored rows of a chunk's keys, as they were before the chunk, with
-- the line whose values they take ("@line": a name no dataset field can have). Dropped at
-- commit. Template {table}.
CREATE TEMP TABLE importq_stored ON COMMIT DROP AS
SELECT 0 AS "@line", t.* FROM {table} t WITH NO DATA;

-- name: lock_stored
-- Update modes: each key's stored row into importq_stored, locked ({lock}: FOR UPDATE OF
-- t; nothing in a dry run), so as it is once locked, the newest version. Every row is
-- locked before anything is written, in the dedup index's order ({stored_order}): two
-- batches updating the same keys wait on each other, never in a cycle. In the settle's
-- savepoint, so a rerun starts with none. Template {first_valid}, {table}, {stored_key}.
INSERT INTO importq_stored
SELECT c.line, t.*
FROM ({first_valid}) AS c
JOIN {table} t ON t.key_hash = c.key_hash AND {stored_key}
ORDER BY {stored_order}
{lock};

-- name: settle_update
-- All of a chunk's writes in one statement (update modes), after lock_stored. Of the
-- valid rows, the first line of each key wins; the key's other rows duplicate it. A
-- winner whose key is stored updates the columns the file has ({update}), or is
-- unchanged when they hold its values already; a new key is inserted (upsert:
-- %(insert_new)s) or fails, "not found" (update-only). A key another batch stores
-- meanwhile fails the insert: the caller rolls back and runs lock_stored and this again.
-- Template: {first_valid} (of every key), {stored_fields} (the stored row's id, as
-- stored_id, and in a dry run the columns the file has not, as "s.<column>"), {changed}
-- (the header names of the changed columns), {update}
-- (update_stored, or check_updates in a dry run), {stored_ref} (a stored row's id, or
-- NULL in a dry run), {results_of_outcomes}.
WITH winners AS MATERIALIZED (
    SELECT c.*, s."@line" IS NOT NULL AS stored, {stored_fields},
           CASE WHEN s."@line" IS NULL THEN '' ELSE {changed} END AS changed_columns
    FROM ({first_valid}) AS c
    LEFT JOIN importq_stored s ON s."@line" = c.line
), inserted AS (
    INSERT INTO {write_to} (key_hash, imported_batch, imported_line, {fields})
    SELECT key_hash, %(batch_id)s, line, {values}
    FROM winners AS c
    WHERE %(insert_new)s AND NOT stored
    ORDER BY {order}
    RETURNING imported_line AS line, {stored_id} AS target_id
), {update},
valid AS (
    SELECT c.line, min(c.line) OVER (PARTITION BY c.key_hash, {key_values}) AS first
    FROM (SELECT * FROM importq_chunk c
          WHERE NOT EXISTS (SELECT FROM importq_failures f WHERE f.line = c.line)
          OFFSET 0) AS c
), outcomes AS (
    SELECT c.*, coalesce(i.target_id, {stored_ref}) AS target_id,
           coalesce(w.changed_columns, '') AS changed_columns,
           CASE WHEN f.message IS NOT NULL THEN 'failure'
                WHEN w.line IS NULL THEN 'duplicate'
                WHEN w.stored AND w.changed_columns = '' THEN 'unchanged'
                WHEN w.stored THEN 'updated'
                WHEN %(insert_new)s THEN 'inserted'
                ELSE 'failure' END AS outcome,
           CASE WHEN f.message IS NOT NULL THEN f.message
                WHEN w.line IS NULL THEN 'duplicate of line ' || v.first
                WHEN w.stored OR %(insert_new)s THEN NULL
                ELSE %(not_found)s END AS message
    FROM importq_chunk c
    LEFT JOIN importq_failures f ON f.line = c.line
    LEFT JOIN winners w ON w.line = c.line
    LEFT JOIN inserted i ON i.line = c.line
    LEFT JOIN valid v ON v.line = c.line
), {results_of_outcomes}

-- name: update_stored
-- The CTEs that write a changed winner's columns ({columns}, {values}) over its stored
-- row, which lock_stored locked, and keep that row as it was in the batch's undo log
-- ({undo_log}: its id and the batch's version's fields {fields}, by name, since the
-- table may have gained columns since the log was made); they run whether or not
-- anything reads them. A dry run checks the rows against importq_dry_run's constraints
-- instead (check_updates). Template {table}; they read the CTE winners.
updated AS (
    UPDATE {table} t SET ({columns}) = ROW({values})
    FROM winners w
    WHERE t.target_id = w.stored_id AND w.changed_columns <> ''
), logged AS (
    INSERT INTO {undo_log} ("@chunk", "@line", target_id, {fields})
    SELECT %(chunk_no)s, s."@line", s.target_id, {stored_fields}
    FROM importq_stored s JOIN winners w ON w.line = s."@line"
    WHERE w.changed_columns <> ''
)

-- name: check_updates
-- A dry run's update_stored: each changed winner's row as the update would leave it
-- ({merged}: its new values over the stored ones), into importq_dry_run, whose
-- constraints are the target's.
updated AS (
    INSERT INTO importq_dry_run (key_hash, imported_batch, imported_line, {fields})
    SELECT w.key_hash, %(batch_id)s, w.line, {merged}
    FROM winners w
    WHERE w.changed_columns <> ''
)

-- name: first_valid_rows
-- Of the valid rows, the first line of each key in the dedup index's order ({order}),
-- among the rows that meet {condition}. OFFSET 0 takes the valid rows before any key is
-- cast, as a failed row's may not be.
SELECT DISTINCT ON ({order}) *
FROM (SELECT * FROM importq_chunk c
      WHERE NOT EXISTS (SELECT FROM importq_failures f WHERE f.line = c.line)
      OFFSET 0) AS c
WHERE {condition}
ORDER BY {order}, line

-- name: new_keys
-- first_valid_rows' condition in insert mode: keys not stored yet. Template {table},
-- {stored_key} (c has stored row t's key).
-- Keys are looked up only if the table holds a row of the chunk's hash range: that test
-- runs once, in the lookups' snapshot, and finds nothing exactly when they all would.
-- Both its bounds are index conditions; the last chunk has no upper one (NULL hash_to).
NOT EXISTS (SELECT FROM {table}
            WHERE key_hash BETWEEN %(hash_from)s::bigint
                               AND coalesce(%(hash_to)s::bigint - 1, 9223372036854775807))
OR NOT EXISTS (SELECT FROM {table} t WHERE t.key_hash = c.key_hash AND {stored_key})

-- name: probe_updates
-- Whether the target takes these rows' values over their stored rows (update modes), in
-- a rolled-back savepoint. Template as settle_update's; {update}: of every row.
WITH winners AS (
    SELECT c.*, {stored_fields}, '-' AS changed_columns
    FROM importq_chunk c JOIN {table} s ON s.key_hash = c.key_hash AND {stored_key_s}
    WHERE c.line = ANY(%(lines)s::int[])
), {update}
SELECT;

-- name: lines_to_insert
-- The lines of the rows a settle statement writes, in line order (template {to_insert}).
SELECT line FROM ({to_insert}) AS c ORDER BY line;

-- name: probe_rows
-- Whether the target accepts these rows, in a rolled-back savepoint (template: settle_chunk;
-- {on_stored_key}: a stored key is no refusal).
INSERT INTO {write_to} (key_hash, imported_batch, imported_line, {fields})
SELECT key_hash, %(batch_id)s, line, {values}
FROM importq_chunk WHERE line = ANY(%(lines)s::int[])
{on_stored_key};

-- name: finish_chunk
-- todo → done | failed. Only a todo chunk moves; the error of an earlier attempt stays.
UPDATE chunks
SET status = %(status)s, error = coalesce(%(error)s, error), attempts = attempts + 1
WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s AND status = 'todo'
RETURNING chunk_no;

-- name: report_blocks
-- A batch's report records in blocks of up to {block} lines, in line order.
-- Per block, each report's records and count, appended to its file in block order (every
-- outcome but a duplicate and a failure is a success);
-- the distinct lines let the aggregation check each line has one result (all in its block).
-- Template: {results} is result_records, or it UNION ALL cancelled_records.
SELECT string_agg(record, '' ORDER BY line)
           FILTER (WHERE outcome NOT IN ('duplicate', 'failure')),
       count(*) FILTER (WHERE outcome NOT IN ('duplicate', 'failure')),
       string_agg(record, '' ORDER BY line) FILTER (WHERE outcome = 'duplicate'),
       count(*) FILTER (WHERE outcome = 'duplicate'),
       string_agg(record, '' ORDER BY line) FILTER (WHERE outcome = 'failure'),
       count(*) FILTER (WHERE outcome = 'failure'),
       count(DISTINCT line)
FROM ({results}) AS result(outcome, line, record)
GROUP BY line / {block}
ORDER BY line / {block};

-- name: result_records
-- The records the batch's chunks stored ({results}: its results table), each with its
-- outcome (a success's: what it did to the table, which report_blocks counts as a
-- success); {which}: the results read (a held batch's successes are held_records
-- instead). Only the lines from %(from_line)s up to %(to_line)s (NULL: the last), both
-- at a block's start: a results row's lines are all in one block, so its first tells
-- whether it is read, before its arrays are. Each branch of
-- report_blocks is one subquery with no condition of its own, so that the UNION ALL is
-- planned as one parallel append, sorted in the workers.
SELECT * FROM (SELECT r.outcome, u.line, u.record
               FROM {results} r, unnest(r.lines, r.records) AS u(line, record)
               WHERE {which} AND r.lines[1] >= %(from_line)s
                 AND (%(to_line)s::int IS NULL OR r.lines[1] < %(to_line)s)) AS stored

-- name: cancelled_ranges
-- The hash ranges of a batch's cancelled chunks, as one multirange (text).
SELECT range_agg(int8range(hash_from, hash_to))::text
FROM chunks
WHERE batch_id = %(batch_id)s AND status = 'cancelled';

-- name: cancelled_records
-- The failure records of the staged rows ({staged}) of the batch's cancelled chunks
-- (%(stopped)s: the message of a cancel or of an abort), made
-- here ({record}: the failure record of a staged row and its message), in the parallel
-- workers; the lines as result_records reads them. Their hash ranges come as a value: a
-- subquery there would keep the sort out of the workers.
SELECT * FROM (SELECT 'failure'::text, line, {record}
               FROM (SELECT s.*, %(stopped)s::text AS message
                     FROM {staged} s
                     WHERE s.key_hash <@ %(cancelled_ranges)s::int8multirange
                       AND s.line >= %(from_line)s
                       AND (%(to_line)s::int IS NULL OR s.line < %(to_line)s)) AS s) AS cancelled

-- name: held_records
-- The failure records of a held batch's valid rows (a checked batch that was not written:
-- its successes were not imported), made from their staged rows ({staged}, {record}) with
-- the message %(stopped)s; their lines are its results' ({results}) successes, those
-- result_records reads.
SELECT * FROM (SELECT 'failure'::text, line, {record}
               FROM (SELECT s.*, %(stopped)s::text AS message
                     FROM {staged} s
                     JOIN (SELECT unnest(lines) AS line FROM {results}
                           WHERE outcome NOT IN ('duplicate', 'failure')
                             AND lines[1] >= %(from_line)s
                             AND (%(to_line)s::int IS NULL OR lines[1] < %(to_line)s)) AS held
                       USING (line)) AS s) AS held

-- name: report_plan
-- The aggregation transaction's settings: a parallel sort, memory to sort in, no JIT.
-- work_mem is per worker and leader; bigger batches sort through temporary files.
-- The results table looks small (arrays stored apart, ten elements an array guessed), so
-- any table is made worth a parallel scan, with workers free to start and to pass rows.
-- No JIT: compiling the query's expressions costs more than it saves.
SELECT set_config('work_mem', '192MB', true), set_config('parallel_tuple_cost', '0', true),
       set_config('parallel_setup_cost', '0', true),
       set_config('min_parallel_table_scan_size', '0', true), set_config('jit', 'off', true);

-- name: report_part_plan
-- After report_plan, for a part of a batch's lines read beside another: no parallel
-- workers, the parts being the query's processes.
SELECT set_config('max_parallel_workers_per_gather', '0', true);

-- name: cancel_chunks
-- todo → cancelled, for a cancelled batch's chunks that no other transaction holds (a
-- running chunk finishes), or only for %(chunk_no)s when set (its caller holds it: its own
-- lock is not skipped). Their rows count as failures; the aggregation reports them from
-- the staged rows. Their jobs still waiting are deleted: each would only find its chunk
-- cancelled, and the batch's completion check and aggregation would wait behind them for
-- a worker's slots (a job already taken finds its chunk cancelled). In the caller's
-- transaction. A row back when some were cancelled: is the batch's last chunk done, how
-- many rows were settled, and the batch's dataset, on_error and dry_run (for the
-- metrics).
WITH cancelled AS (
    UPDATE chunks c SET status = 'cancelled'
    FROM (SELECT batch_id, chunk_no FROM chunks
          WHERE batch_id = %(batch_id)s AND status = 'todo'
            AND (%(chunk_no)s::int IS NULL OR chunk_no = %(chunk_no)s::int)
            AND EXISTS (SELECT FROM batches WHERE id = %(batch_id)s AND status = 'active')
          FOR UPDATE OF chunks SKIP LOCKED) AS free
    WHERE c.batch_id = free.batch_id AND c.chunk_no = free.chunk_no
    RETURNING c.chunk_no, c.row_count
), unqueued AS (
    -- Waiting jobs only ('todo', which the worker's fetch skips once it has locked one).
    DELETE FROM procrastinate_jobs j
    USING cancelled
    WHERE j.status = 'todo' AND j.task_name = 'process_chunk'
      AND j.args->>'batch_id' = %(batch_id)s::text
      AND (j.args->>'chunk_no')::int = cancelled.chunk_no
), counted AS (
    SELECT count(*)::int AS chunks, coalesce(sum(row_count), 0)::int AS rows FROM cancelled
)
UPDATE batches
SET completed_chunks = completed_chunks + counted.chunks,
    cancelled_chunks = cancelled_chunks + counted.chunks,
    processed_rows = processed_rows + counted.rows,
    failures = failures + counted.rows,
    updated_at = clock_timestamp()
FROM counted
WHERE id = %(batch_id)s AND status = 'active' AND counted.chunks > 0
RETURNING completed_chunks + failed_chunks = total_chunks AS is_last, counted.rows, dataset,
          on_error, dry_run;

-- name: count_chunk_attempt
-- Count a failed or lost attempt, in its own transaction.
-- No row back if the chunk is finished, or locked: another delivery of its job is at work.
UPDATE chunks c SET attempts = c.attempts + 1, error = %(error)s
FROM (SELECT batch_id, chunk_no FROM chunks
      WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s AND status = 'todo'
      FOR UPDATE SKIP LOCKED) AS free
WHERE c.batch_id = free.batch_id AND c.chunk_no = free.chunk_no
RETURNING c.attempts;

-- name: chunk_status
-- A chunk's status (todo, done, failed, cancelled).
SELECT status FROM chunks WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s;

-- name: plan_undo
-- An undo chunk's rows: the lines that chunk %(chunk_no)s of the batch undone inserted or
-- updated ({undone_results}: its results), and which it did; dropped at commit.
CREATE TEMP TABLE importq_planned ON COMMIT DROP AS
SELECT u.line, r.outcome AS kind
FROM {undone_results} r, unnest(r.lines) AS u(line)
WHERE r.chunk_no = %(chunk_no)s AND r.outcome IN ('inserted', 'updated');

-- name: keep_planned
-- Only an undo chunk's rows stay in importq_chunk, so every statement after (a give-up's
-- included) reads those alone.
DELETE FROM importq_chunk c WHERE NOT EXISTS (SELECT FROM importq_planned p WHERE p.line = c.line);

-- name: create_undo_rows
-- An undo chunk's rows as they are stored now (target columns), with "@line" and "@kind"
-- (names no dataset field can have). Dropped at commit. Template {table}.
CREATE TEMP TABLE importq_undo ON COMMIT DROP AS
SELECT 0 AS "@line", ''::text AS "@kind", t.* FROM {table} t WITH NO DATA;

-- name: lock_undo
-- An undo chunk's stored rows into importq_undo, locked in the dedup index's order (as
-- update modes lock), each as it is once locked: an inserted row found by its key, if it
-- is still the row the batch undone inserted (imported_batch, imported_line); an updated
-- row by its id, from the undo log ({undo_log}). A row deleted since is not found. In the
-- settle's savepoint. Template {table}, {stored_key}, {stored_order}.
INSERT INTO importq_undo
SELECT x.line, x.kind, t.*
FROM (SELECT c.line, p.kind,
             CASE WHEN p.kind = 'inserted'
                  THEN (SELECT t.target_id FROM {table} t
                        WHERE t.key_hash = c.key_hash AND {stored_key}
                          AND t.imported_batch = %(undone)s AND t.imported_line = c.line)
                  ELSE l.target_id END AS target_id
      FROM importq_chunk c
      JOIN importq_planned p ON p.line = c.line
      LEFT JOIN {undo_log} l ON l."@chunk" = %(chunk_no)s AND l."@line" = c.line) AS x
JOIN {table} t ON t.target_id = x.target_id
ORDER BY {stored_order}
FOR UPDATE OF t;

-- name: undo_chunk
-- All of an undo chunk's writes in one statement, after lock_undo. A row as the batch
-- undone left it is undone: an inserted row deleted, an updated row restored from the
-- undo log. A row changed since (by a batch or a user), or gone, is left alone and fails.
-- Template: {table}, {undo_log}, {fields}; {current}: importq_undo u's dataset columns;
-- {inserted}: the values the batch inserted (from the chunk row c); {after}: those its
-- update left (c's for the file's columns, the log's l for the others); {before}: l's;
-- {restored_columns}: the header names of the columns a restore changes;
-- {results_of_outcomes}.
WITH judged AS MATERIALIZED (
    SELECT c.line, p.kind, u.target_id,
           CASE WHEN u."@line" IS NULL THEN 'gone'
                WHEN p.kind = 'inserted' AND ROW({current}) IS NOT DISTINCT FROM ROW({inserted})
                    THEN 'undo'
                WHEN p.kind = 'updated' AND ROW({current}) IS NOT DISTINCT FROM ROW({after})
                    THEN 'undo'
                ELSE 'changed' END AS verdict,
           CASE WHEN p.kind = 'updated' AND u."@line" IS NOT NULL THEN {restored_columns}
                ELSE '' END AS changed_columns
    FROM importq_chunk c
    JOIN importq_planned p ON p.line = c.line
    LEFT JOIN importq_undo u ON u."@line" = c.line
    LEFT JOIN {undo_log} l ON l."@chunk" = %(chunk_no)s AND l."@line" = c.line
), deleted AS (
    DELETE FROM {table} t USING judged j
    WHERE t.target_id = j.target_id AND j.kind = 'inserted' AND j.verdict = 'undo'
), restored AS (
    UPDATE {table} t SET ({fields}) = ROW({before})
    FROM judged j JOIN {undo_log} l ON l."@chunk" = %(chunk_no)s AND l."@line" = j.line
    WHERE t.target_id = j.target_id AND j.kind = 'updated' AND j.verdict = 'undo'
), outcomes AS (
    SELECT c.*, j.target_id, j.changed_columns,
           CASE WHEN j.verdict <> 'undo' THEN 'failure'
                WHEN j.kind = 'inserted' THEN 'deleted'
                ELSE 'restored' END AS outcome,
           CASE j.verdict WHEN 'gone' THEN %(gone)s WHEN 'changed' THEN %(changed)s END
               AS message
    FROM importq_chunk c JOIN judged j ON j.line = c.line
), {results_of_outcomes}

-- name: written_per_chunk
-- The rows each chunk of a batch inserted or updated ({results}: its results table).
-- chunk_no NULL: results made before undo existed.
SELECT chunk_no, sum(cardinality(lines))::int
FROM {results}
WHERE outcome IN ('inserted', 'updated', 'success')
GROUP BY chunk_no
ORDER BY chunk_no;

-- name: not_a_run_of
-- A stored-key condition ({stored_key}) that passes over the rows any run of an upload
-- inserted: batch {upload} or one of its reruns (a dry-run rerun's view of the target).
-- The subquery does not depend on the row: it runs once.
{stored_key} AND (t.imported_batch IS NULL
                  OR t.imported_batch NOT IN (SELECT id FROM batches
                                              WHERE id = {upload}::uuid
                                                 OR rerun_of = {upload}::uuid))
