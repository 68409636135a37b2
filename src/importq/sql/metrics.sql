-- What a scrape of /metrics reads of the database's state (importq.operations.metrics).

-- name: metrics_state
-- One row a value, (series, label, label, value): ('batches', dataset, status, count) for
-- each dataset and status batches have; ('queue_jobs', queue, 'todo' | 'doing', count)
-- and ('oldest_job_age', queue, NULL, seconds) for each queue of %(queues)s and any other
-- a job waits on, at 0 when it has none. A job is due once its scheduled_at (set by a
-- schedule or a retry) has passed, or at once when it has none; a queue's age is that of
-- its job due longest: the earliest scheduled_at of its due jobs, or the deferral of its
-- unscheduled job of lowest id (ids grow with deferrals), whichever is older. Live jobs
-- are read once, through procrastinate's partial index on todo and doing; the deferral is
-- one lookup a queue in procrastinate_events, by its job_id index.
WITH live AS (
    SELECT queue_name AS queue,
           count(*) FILTER (WHERE status = 'todo') AS todo,
           count(*) FILTER (WHERE status = 'doing') AS doing,
           min(scheduled_at) FILTER (WHERE status = 'todo' AND scheduled_at <= now())
               AS first_scheduled,
           min(id) FILTER (WHERE status = 'todo' AND scheduled_at IS NULL) AS first_unscheduled
    FROM procrastinate_jobs
    WHERE status IN ('todo', 'doing')
    GROUP BY queue_name
), queues AS (
    SELECT unnest(%(queues)s::text[]) AS queue
    UNION
    SELECT queue FROM live
), waiting AS (
    SELECT l.queue, l.todo, l.doing,
           least(l.first_scheduled,
                 (SELECT min(e.at) FROM procrastinate_events e
                  WHERE e.job_id = l.first_unscheduled AND e.type = 'deferred')) AS since
    FROM live l
)
SELECT 'batches' AS series, dataset AS first, status AS second, count(*)::float8 AS value
FROM batches
GROUP BY dataset, status
UNION ALL
SELECT 'queue_jobs', q.queue, s.status,
       coalesce(CASE s.status WHEN 'todo' THEN w.todo ELSE w.doing END, 0)::float8
FROM queues q
CROSS JOIN (VALUES ('todo'), ('doing')) AS s(status)
LEFT JOIN waiting w ON w.queue = q.queue
UNION ALL
SELECT 'oldest_job_age', q.queue, NULL,
       greatest(coalesce(extract(epoch FROM clock_timestamp() - w.since), 0), 0)::float8
FROM queues q
LEFT JOIN waiting w ON w.queue = q.queue;
