-- What a scrape of /metrics reads of the database's state (importq.operations.metrics).

-- name: metrics_state
-- One row a value, (series, label, label, value): ('batches', dataset, status, count) for
-- each dataset and status batches have; ('queue_jobs', queue, 'todo' | 'doing', count)
-- and ('oldest_job_age', queue, NULL, seconds) for each queue of %(queues)s and any other
-- a job waits on, at 0 when it has none. A job waits from its deferral, its last retry or
-- its schedule, whichever came last; a job scheduled for later does not wait yet. Only
-- live jobs are read, through procrastinate's partial indexes on todo and doing.
WITH live AS (
    SELECT queue_name AS queue, status::text AS status, count(*) AS jobs
    FROM procrastinate_jobs
    WHERE status IN ('todo', 'doing')
    GROUP BY queue_name, status
), queues AS (
    SELECT unnest(%(queues)s::text[]) AS queue
    UNION
    SELECT queue FROM live
), waiting AS (
    SELECT j.queue_name AS queue, min(greatest(j.scheduled_at, e.at)) AS since
    FROM procrastinate_jobs j
    CROSS JOIN LATERAL (
        SELECT max(at) AS at FROM procrastinate_events
        WHERE job_id = j.id AND type IN ('deferred', 'deferred_for_retry')
    ) e
    WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
    GROUP BY j.queue_name
)
SELECT 'batches' AS series, dataset AS first, status AS second, count(*)::float8 AS value
FROM batches
GROUP BY dataset, status
UNION ALL
SELECT 'queue_jobs', q.queue, s.status, coalesce(l.jobs, 0)::float8
FROM queues q
CROSS JOIN (VALUES ('todo'), ('doing')) AS s(status)
LEFT JOIN live l ON l.queue = q.queue AND l.status = s.status
UNION ALL
SELECT 'oldest_job_age', q.queue, NULL,
       greatest(coalesce(extract(epoch FROM clock_timestamp() - w.since), 0), 0)::float8
FROM queues q
LEFT JOIN waiting w ON w.queue = q.queue;
