-- A user's saved header mappings (importq.ingest.saved_mappings).

-- name: save_mapping
-- Save (or replace) a user's mapping under its name.
INSERT INTO mappings (user_id, name, dataset, header, mapping)
VALUES (%(user_id)s, %(name)s, %(dataset)s, %(header)s, %(mapping)s)
ON CONFLICT (user_id, name) DO UPDATE
SET dataset = EXCLUDED.dataset, header = EXCLUDED.header, mapping = EXCLUDED.mapping,
    saved_at = now()
RETURNING saved_at;

-- name: user_mappings
-- A user's mappings, of one dataset or all (%(dataset)s NULL), newest first.
SELECT name, dataset, header, mapping, saved_at FROM mappings
WHERE user_id = %(user_id)s AND (%(dataset)s::text IS NULL OR dataset = %(dataset)s)
ORDER BY saved_at DESC, name;

-- name: user_mapping
-- One of a user's mappings, by name.
SELECT name, dataset, header, mapping, saved_at FROM mappings
WHERE user_id = %(user_id)s AND name = %(name)s;

-- name: delete_mapping
-- Delete one of a user's mappings; a row when there was one.
DELETE FROM mappings WHERE user_id = %(user_id)s AND name = %(name)s RETURNING name;
