-- What importq doctor asks the database (importq.operations.doctor).

-- name: live_workers
-- Workers whose heartbeat is recent.
SELECT count(*) FROM procrastinate_workers
WHERE last_heartbeat > now() - make_interval(secs => %(seconds)s);

-- name: database_clock
-- The database's time, in seconds since the epoch.
SELECT extract(epoch FROM clock_timestamp());
