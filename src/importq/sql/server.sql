-- The server: whether it answers, and the embedded server's settings.

-- name: setting_differs
-- Whether memory setting {name} (a literal) is not %(size)s (such as '1GB', as read back).
SELECT pg_size_bytes(%(size)s) <> pg_size_bytes(current_setting({name}));

-- name: record_setting
-- Record {name} = {size} in postgresql.auto.conf; a restart or a reload applies it.
ALTER SYSTEM SET {name} = {size};

-- name: reload_settings
-- Apply the recorded settings a reload can change (max_wal_size).
SELECT pg_reload_conf();

-- name: ping
-- Whether the server answers, for health checks and the outage watch.
SELECT 1;
