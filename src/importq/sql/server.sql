-- The embedded server's settings.

-- name: setting_differs
-- Whether a memory-size setting (template {name}: a literal) is not %(size)s now (a size
-- such as '1GB'; the value read back is in the same form).
SELECT pg_size_bytes(%(size)s) <> pg_size_bytes(current_setting({name}));

-- name: record_setting
-- Record a setting in postgresql.auto.conf (template {name}: an identifier, {size}: a
-- literal); a restart or a reload applies it.
ALTER SYSTEM SET {name} = {size};

-- name: reload_settings
-- Apply the recorded settings a reload can change (max_wal_size).
SELECT pg_reload_conf();
