-- Chunks and their rows: staging, claiming, results.
-- A chunk goes todo → done or todo → failed, once; both are final.

-- name: staged_hashes_in_order
-- Every staged row's key hash of a batch, ascending: the input of chunk_bounds().
SELECT key_hash FROM staged_rows WHERE batch_id = %(batch_id)s ORDER BY key_hash;

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

-- name: chunk_rows
-- A chunk's staged rows in line order (the first valid row of a key wins).
SELECT line, key_hash, "values", problem
FROM staged_rows
WHERE batch_id = %(batch_id)s AND key_hash >= %(hash_from)s
  AND (%(hash_to)s::bigint IS NULL OR key_hash < %(hash_to)s)
ORDER BY line;

-- name: finish_chunk
-- todo → done | failed. Only a todo chunk moves; the error of an earlier attempt stays.
UPDATE chunks
SET status = %(status)s, error = coalesce(%(error)s, error), attempts = attempts + 1
WHERE batch_id = %(batch_id)s AND chunk_no = %(chunk_no)s AND status = 'todo'
RETURNING chunk_no;

-- name: row_results_in_line_order
-- Every row result of a batch, in line order: the input of the reports.
SELECT outcome, record
FROM row_results WHERE batch_id = %(batch_id)s ORDER BY line;

-- name: purge_staged_rows
-- Drop staged rows of batches finished before the cutoff.
DELETE FROM staged_rows s USING batches b
WHERE s.batch_id = b.id AND b.completed_at < %(cutoff)s;

-- name: copy_staged_rows
-- Stream an upload's rows into staging (binary COPY: uuid, int4, int8, text, json).
COPY staged_rows (batch_id, line, key_hash, problem, "values") FROM STDIN (FORMAT BINARY);

-- name: copy_row_results
-- Stream a chunk's row results (binary COPY: uuid, int4, text, text, text, text).
COPY row_results (batch_id, line, outcome, message, target_id, record)
FROM STDIN (FORMAT BINARY);

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
