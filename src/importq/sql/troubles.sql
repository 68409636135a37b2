-- Work that failed or is stuck, for admins (importq.pipeline.troubles).

-- name: troubled_jobs
-- Jobs that ended failed (%(state)s failed) or wait to be tried again after a failed
-- attempt (retrying: todo after an attempt), newest first, with the batch and chunk
-- their arguments name and the last error importq recorded for that work: the chunk's,
-- the delivery's, else the batch's. %(batch_id)s NULL: every batch's.
SELECT j.id, j.task_name, j.queue_name, j.status::text AS status, j.attempts,
       j.scheduled_at, b.id AS batch_id, (j.args ->> 'chunk_no')::int AS chunk_no,
       coalesce(c.error, d.last_error, b.last_error) AS last_error,
       count(*) OVER () AS total
FROM procrastinate_jobs j
LEFT JOIN batches b ON b.id::text = j.args ->> 'batch_id'
LEFT JOIN chunks c ON j.task_name = 'process_chunk' AND c.batch_id = b.id
                  AND c.chunk_no = (j.args ->> 'chunk_no')::int
LEFT JOIN deliveries d ON d.batch_id = b.id
                      AND d.channel = CASE j.task_name WHEN 'send_email' THEN 'email'
                                                       WHEN 'deliver_webhook' THEN 'webhook' END
WHERE CASE WHEN %(state)s = 'failed' THEN j.status = 'failed'
           ELSE j.status = 'todo' AND j.attempts > 0 END
  AND (%(batch_id)s::text IS NULL OR j.args ->> 'batch_id' = %(batch_id)s::text)
ORDER BY j.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: job_to_retry
-- A job, locked, with whether it is a chunk job whose chunk is no longer to do (given up
-- or done: running it again would do nothing).
SELECT j.status::text, j.attempts,
       j.task_name = 'process_chunk' AND c.status IS DISTINCT FROM 'todo' AS chunk_settled
FROM procrastinate_jobs j
LEFT JOIN chunks c ON j.task_name = 'process_chunk'
                  AND c.batch_id::text = j.args ->> 'batch_id'
                  AND c.chunk_no = (j.args ->> 'chunk_no')::int
WHERE j.id = %(job_id)s
FOR UPDATE OF j;

-- name: retry_failed_job
-- A failed job, to do again now (procrastinate's own retry: attempts go on counting).
SELECT procrastinate_retry_job_v2(%(job_id)s, now(), NULL, NULL, NULL);

-- name: retry_waiting_job
-- A job waiting for its retry, tried now.
UPDATE procrastinate_jobs SET scheduled_at = now()
WHERE id = %(job_id)s AND status = 'todo';

-- name: stuck_batches
-- Batches still unfinished whose last change is older than %(minutes)s minutes, oldest
-- first (200 at most), with what tells why: their chunks to do, the most attempts and
-- the errors of those, and their jobs waiting or failed. The queue's jobs are read once
-- for all of them, by the batch their arguments name: failed jobs have no index, so a
-- lookup a batch would scan the table a batch.
WITH stuck AS (
    SELECT id, dataset, status, updated_at, total_chunks,
           completed_chunks + failed_chunks AS finished_chunks, last_error
    FROM batches
    WHERE status IN ('pending', 'active', 'aggregating')
      AND updated_at < now() - make_interval(secs => %(minutes)s * 60)
    ORDER BY updated_at
    LIMIT 200
), chunks_to_do AS (
    SELECT c.batch_id, count(*) AS chunks_to_do, max(c.attempts) AS most_attempts,
           string_agg(DISTINCT c.error, '; ') AS chunk_errors
    FROM chunks c
    JOIN stuck s ON s.id = c.batch_id
    WHERE c.status = 'todo'
    GROUP BY c.batch_id
), jobs AS (
    SELECT j.args ->> 'batch_id' AS batch_id,
           count(*) FILTER (WHERE j.status IN ('todo', 'doing')) AS waiting,
           count(*) FILTER (WHERE j.status = 'failed') AS failed
    FROM procrastinate_jobs j
    WHERE j.status IN ('todo', 'doing', 'failed')
      AND j.args ->> 'batch_id' IN (SELECT id::text FROM stuck)
    GROUP BY j.args ->> 'batch_id'
)
SELECT s.id, s.dataset, s.status, s.updated_at, s.total_chunks, s.finished_chunks,
       s.last_error, coalesce(c.chunks_to_do, 0) AS chunks_to_do,
       coalesce(c.most_attempts, 0) AS most_attempts, c.chunk_errors,
       coalesce(j.waiting, 0) AS jobs_waiting, coalesce(j.failed, 0) AS jobs_failed
FROM stuck s
LEFT JOIN chunks_to_do c ON c.batch_id = s.id
LEFT JOIN jobs j ON j.batch_id = s.id::text
ORDER BY s.updated_at;
