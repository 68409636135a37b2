-- Users and API tokens.

-- name: insert_user
-- A new user; the name is unique (a second one raises UniqueViolation).
INSERT INTO users (name, role, email, locale)
VALUES (%(name)s, %(role)s, %(email)s, %(locale)s)
RETURNING id;

-- name: find_user_id
-- A user's id by name.
SELECT id FROM users WHERE name = %(name)s;

-- name: insert_token
-- Store a token's digest for a user.
INSERT INTO api_tokens (token_hash, user_id) VALUES (%(token_hash)s, %(user_id)s);

-- name: user_by_token
-- The user a token digest belongs to.
SELECT u.id, u.name, u.role, u.email, u.locale
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s;

-- name: user_by_id
-- One user.
SELECT id, name, role, email, locale FROM users WHERE id = %(user_id)s;

-- name: any_admin
-- Whether an admin exists.
SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin');
