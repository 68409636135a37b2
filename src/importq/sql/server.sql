-- The embedded server's settings.

-- name: shared_buffers_differ
-- Whether the running shared_buffers is not %(size)s (a memory size such as '1GB').
SELECT pg_size_bytes(%(size)s) <> setting::bigint * current_setting('block_size')::bigint
FROM pg_settings WHERE name = 'shared_buffers';

-- name: set_shared_buffers
-- Record a shared_buffers for the next start (template {size}: a literal).
ALTER SYSTEM SET shared_buffers = {size};
