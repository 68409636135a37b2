-- Batches. Each status transition is one UPDATE … WHERE status = <expected> RETURNING:
-- only the caller that gets a row back made it.

-- name: find_batch_by_idempotency_key
-- The batch this user already created with this Idempotency-Key, and its request's digest.
SELECT id, total_rows, total_chunks, request_digest
FROM batches
WHERE initiator_id = %(initiator_id)s AND idempotency_key = %(idempotency_key)s;

-- name: insert_batch
-- A batch is born active, in the transaction that stages its rows.
INSERT INTO batches (id, dataset, format, file_name, initiator_id, locale, callback_url,
                     status, header, total_rows, total_chunks, warnings, idempotency_key,
                     request_digest, dry_run, mode, on_error, abort_percent, dataset_version,
                     mapping, decimal_mark, date_format, rerun_of, file_options, request_id,
                     trace)
VALUES (%(id)s, %(dataset)s, %(format)s, %(file_name)s, %(initiator_id)s, %(locale)s,
        %(callback_url)s, 'active', %(header)s, %(total_rows)s, %(total_chunks)s,
        %(warnings)s, %(idempotency_key)s, %(request_digest)s, %(dry_run)s, %(mode)s,
        %(on_error)s, %(abort_percent)s, %(dataset_version)s, %(mapping)s,
        %(decimal_mark)s, %(date_format)s, %(rerun_of)s, %(file_options)s, %(request_id)s,
        %(trace)s);

-- name: count_finished_chunk
-- Add a finished chunk's outcome to its batch (in the chunk's transaction); is it the last?
-- Is the batch aborted (now or before): on_error abort, and more than abort_percent % of
-- its rows failed, unless a cancel came first (its rows count as failures, and it is no
-- abort)? (SET reads the row as it was: failures is the count before this chunk.)
UPDATE batches
SET completed_chunks = completed_chunks + %(done)s,
    failed_chunks = failed_chunks + %(failed)s,
    processed_rows = processed_rows + %(successes)s + %(duplicates)s + %(failures)s,
    successes = successes + %(successes)s,
    inserted = inserted + %(inserted)s,
    updated = updated + %(updated)s,
    unchanged = unchanged + %(unchanged)s,
    deleted = deleted + %(deleted)s,
    restored = restored + %(restored)s,
    duplicates = duplicates + %(duplicates)s,
    failures = failures + %(failures)s,
    aborted_at = CASE WHEN aborted_at IS NULL AND cancelled_at IS NULL AND on_error = 'abort'
                           AND (failures + %(failures)s) * 100 > abort_percent * total_rows
                      THEN clock_timestamp() ELSE aborted_at END,
    -- When the chunk's work ends, not when its transaction began (now()): what a client
    -- following the batch is told happened, moments before the commit.
    updated_at = clock_timestamp()
WHERE id = %(batch_id)s AND status = 'active'
RETURNING completed_chunks + failed_chunks = total_chunks AS is_last, aborted_at IS NOT NULL;

-- name: start_aggregation
-- The completion guard: exactly one caller moves a fully processed batch to aggregating.
UPDATE batches
SET status = 'aggregating', updated_at = now()
WHERE id = %(batch_id)s AND status = 'active'
  AND completed_chunks + failed_chunks = total_chunks
RETURNING id;

-- name: cancel_batch
-- Ask a batch to stop: an active one whose chunks are not all finished, or one asked
-- already (the first time is kept). One UPDATE, so that a cancel waiting on another's
-- row lock judges the row that other cancel left. A row back: the batch is cancelled.
UPDATE batches
SET cancelled_at = coalesce(cancelled_at, now()),
    updated_at = CASE WHEN cancelled_at IS NULL THEN now() ELSE updated_at END
WHERE id = %(batch_id)s
  AND (cancelled_at IS NOT NULL
       OR (status = 'active' AND completed_chunks + failed_chunks < total_chunks))
RETURNING id;

-- name: record_batch_error
-- Note why the batch is not moving (storage down…) without changing its status.
UPDATE batches SET last_error = %(error)s, updated_at = now() WHERE id = %(batch_id)s;

-- name: finish_batch
-- aggregating → cancelled | completed | failed, with the result. Only one aggregation
-- gets a row. Failed: aborted for its failures. Cancelled: the cancel kept some chunk from
-- running, or a checked batch from being written (otherwise one that came while the last
-- chunks ran changed nothing, and the batch ends as it would have).
UPDATE batches
SET status = CASE WHEN aborted_at IS NOT NULL THEN 'failed'
                  WHEN cancelled_chunks > 0
                       OR (cancelled_at IS NOT NULL AND on_error <> 'continue'
                           AND written_at IS NULL) THEN 'cancelled'
                  WHEN failed_chunks = total_chunks THEN 'failed'
                  ELSE 'completed' END,
    result = %(result)s,
    report_paths = %(report_paths)s,
    reports_expire_at = %(reports_expire_at)s,
    last_error = NULL,
    completed_at = now(),
    updated_at = now()
WHERE id = %(batch_id)s AND status = 'aggregating'
RETURNING status;

-- name: get_batch
-- One batch with everything the API and the aggregation read.
SELECT id, dataset, format, file_name, initiator_id, locale, callback_url, status, header,
       total_rows, total_chunks, completed_chunks, failed_chunks, processed_rows,
       successes, duplicates, failures, result, warnings, last_error, report_paths,
       reports_expire_at, created_at, updated_at, completed_at, cancelled_at, dry_run,
       revision, cancelled_chunks, mode, inserted, updated, unchanged, on_error,
       abort_percent, aborted_at, written_at, deleted, restored, type, undo_of, undone_by,
       dataset_version, mapping, decimal_mark, date_format, rerun_of, file_options, purged_at,
       request_id, trace
FROM batches
WHERE id = %(batch_id)s;

-- name: list_batches
-- A page of batches, newest first; NULL filters match everything. Days are UTC days,
-- until included.
SELECT id, dataset, format, file_name, initiator_id, locale, callback_url, status, header,
       total_rows, total_chunks, completed_chunks, failed_chunks, processed_rows,
       successes, duplicates, failures, result, warnings, last_error, report_paths,
       reports_expire_at, created_at, updated_at, completed_at, cancelled_at, dry_run,
       revision, mode, inserted, updated, unchanged, on_error, abort_percent, aborted_at,
       written_at, deleted, restored, type, undo_of, undone_by, dataset_version, mapping,
       decimal_mark, date_format, rerun_of,
       count(*) OVER () AS total
FROM batches
WHERE (%(initiator_id)s::bigint IS NULL OR initiator_id = %(initiator_id)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(dataset)s::text IS NULL OR dataset = %(dataset)s)
  AND (%(since)s::date IS NULL OR created_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC')
  AND (%(until)s::date IS NULL
       OR created_at < (%(until)s::date + 1)::timestamp AT TIME ZONE 'UTC')
ORDER BY created_at DESC, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_batches
-- How many batches match the list filters (for a page past the end).
SELECT count(*)
FROM batches
WHERE (%(initiator_id)s::bigint IS NULL OR initiator_id = %(initiator_id)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(dataset)s::text IS NULL OR dataset = %(dataset)s)
  AND (%(since)s::date IS NULL OR created_at >= %(since)s::date::timestamp AT TIME ZONE 'UTC')
  AND (%(until)s::date IS NULL
       OR created_at < (%(until)s::date + 1)::timestamp AT TIME ZONE 'UTC');

-- name: batches_waiting_for_completion
-- Active batches whose every chunk is finished with no completion check waiting or
-- running: theirs was missed.
SELECT b.id, b.request_id, b.trace FROM batches b
WHERE b.status = 'active' AND b.completed_chunks + b.failed_chunks = b.total_chunks
  AND NOT EXISTS (
      SELECT 1 FROM procrastinate_jobs j
      WHERE j.task_name = 'check_completion' AND j.status IN ('todo', 'doing')
        AND j.args ->> 'batch_id' = b.id::text);

-- name: batches_stuck_aggregating
-- Batches in aggregating with no aggregate job waiting or running.
SELECT b.id, b.request_id, b.trace FROM batches b
WHERE b.status = 'aggregating'
  AND NOT EXISTS (
      SELECT 1 FROM procrastinate_jobs j
      WHERE j.task_name = 'aggregate' AND j.status IN ('todo', 'doing')
        AND j.args ->> 'batch_id' = b.id::text);

-- name: chunks_without_job
-- Todo chunks of active batches with no live process_chunk job: lost, or died failing them.
SELECT c.batch_id, c.chunk_no, b.request_id, b.trace
FROM chunks c JOIN batches b ON b.id = c.batch_id
WHERE b.status = 'active' AND c.status = 'todo'
  AND NOT EXISTS (
      SELECT 1 FROM procrastinate_jobs j
      WHERE j.task_name = 'process_chunk' AND j.status IN ('todo', 'doing')
        AND j.args ->> 'batch_id' = c.batch_id::text
        AND (j.args ->> 'chunk_no')::int = c.chunk_no)
ORDER BY c.batch_id, c.chunk_no;

-- name: batches_to_purge
-- Finished batches past retention whose stored files are still there, oldest first.
SELECT id FROM batches
WHERE purged_at IS NULL AND completed_at < %(cutoff)s
ORDER BY completed_at
LIMIT %(limit)s;

-- name: forget_batch_reports
-- Before a batch's stored files are deleted: no more links are signed for them.
UPDATE batches SET report_paths = NULL, updated_at = now() WHERE id = %(batch_id)s;

-- name: mark_batch_purged
-- The batch's stored files are gone.
UPDATE batches SET purged_at = now(), updated_at = now() WHERE id = %(batch_id)s;

-- name: pending_rows_of_user
-- Rows of a user's active batches that no chunk has processed yet.
SELECT coalesce(sum(total_rows - processed_rows), 0)::bigint FROM batches
WHERE initiator_id = %(user_id)s AND status = 'active';

-- name: record_written_batch
-- A checked batch's chunks written, in the transaction that wrote them: its counters are
-- now those of the writes.
UPDATE batches
SET successes = %(successes)s, inserted = %(inserted)s, updated = %(updated)s,
    unchanged = %(unchanged)s, deleted = %(deleted)s, restored = %(restored)s,
    duplicates = %(duplicates)s, failures = %(failures)s,
    written_at = now(), updated_at = now()
WHERE id = %(batch_id)s AND status = 'aggregating' AND written_at IS NULL;

-- name: hold_checked_batch
-- A checked batch that is not written: aborted unless a cancel stopped it, and what its
-- chunks found valid counted as failures (not imported). Running it again changes nothing.
UPDATE batches
SET aborted_at = CASE WHEN cancelled_at IS NOT NULL THEN aborted_at
                      ELSE coalesce(aborted_at, now()) END,
    failures = failures + successes, successes = 0, inserted = 0, updated = 0,
    unchanged = 0, updated_at = now()
WHERE id = %(batch_id)s AND status = 'aggregating' AND written_at IS NULL;

-- name: batch_to_undo
-- The batch an undo is asked for, locked until the undo's transaction ends (a second
-- undo waits here, then finds it undone; the purge waits too, then spares its tables).
-- expired: past the retention period, or its staged rows, results or chunk numbers gone
-- (a batch imported before undo existed has results without chunk numbers).
SELECT b.id, b.status, b.type, b.dry_run, b.inserted + b.updated AS written, b.undone_by,
       b.purged_at IS NOT NULL OR b.completed_at < %(cutoff)s
       OR to_regclass(%(staged)s) IS NULL OR to_regclass(%(results)s) IS NULL AS expired
FROM batches b
WHERE b.id = %(batch_id)s
FOR UPDATE;

-- name: insert_undo_batch
-- An undo, born active, of batch %(undo_of)s: its dataset (the version that judged it,
-- read as its upload was), header, file and webhook; initiated by who asked, whose
-- request and trace it carries.
INSERT INTO batches (id, type, undo_of, dataset, format, file_name, initiator_id, locale,
                     callback_url, status, header, total_rows, total_chunks, mode,
                     dataset_version, mapping, decimal_mark, date_format, request_id, trace)
SELECT %(id)s, 'undo', b.id, b.dataset, b.format, b.file_name, %(initiator_id)s, %(locale)s,
       b.callback_url, 'active', b.header, %(total_rows)s, %(total_chunks)s, b.mode,
       b.dataset_version, b.mapping, b.decimal_mark, b.date_format, %(request_id)s,
       %(trace)s
FROM batches b
WHERE b.id = %(undo_of)s;

-- name: insert_undo_chunks
-- An undo's chunks: the hash ranges of the undone batch's chunks that wrote rows, under
-- their numbers, each with the rows it wrote.
INSERT INTO chunks (batch_id, chunk_no, hash_from, hash_to, row_count)
SELECT %(id)s, c.chunk_no, c.hash_from, c.hash_to, w.row_count
FROM chunks c
JOIN unnest(%(chunk_nos)s::int[], %(row_counts)s::int[]) AS w(chunk_no, row_count)
  ON w.chunk_no = c.chunk_no
WHERE c.batch_id = %(undo_of)s;

-- name: mark_undone
-- A finished batch → undone, by its undo, in the undo's transaction.
UPDATE batches SET status = 'undone', undone_by = %(undo_id)s, updated_at = now()
WHERE id = %(batch_id)s AND status IN ('completed', 'failed', 'cancelled');

-- name: batch_to_purge_lock
-- The batch whose staged tables the purge is about to drop, locked: an undo asked for it
-- meanwhile waits, then finds them gone. Its undo, if any (the locked row's newest
-- version says).
SELECT undone_by FROM batches WHERE id = %(batch_id)s FOR UPDATE;

-- name: undo_running
-- Whether an undo still runs (it reads the staged tables of the batch it undoes). A
-- statement of its own after batch_to_purge_lock: its snapshot sees an undo committed
-- while that one waited.
SELECT status IN ('active', 'aggregating') FROM batches WHERE id = %(batch_id)s;
