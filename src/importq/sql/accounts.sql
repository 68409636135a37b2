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
-- Store a token's digest for a user, with its name and expiry; its id names it.
INSERT INTO api_tokens (token_hash, user_id, name, expires_at, for_session)
VALUES (%(token_hash)s, %(user_id)s, %(name)s,
        now() + make_interval(secs => %(expires_in)s), %(for_session)s)
RETURNING id;

-- name: user_by_token
-- The user a token digest belongs to, the token's id, and what would stop it.
SELECT u.id, u.name, u.role, u.email, u.locale, t.id,
       t.revoked_at IS NOT NULL, t.expires_at <= now(), u.disabled_at IS NOT NULL
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = %(token_hash)s;

-- name: user_by_token_id
-- user_by_token, for a token named by its id (a web session's).
SELECT u.id, u.name, u.role, u.email, u.locale, t.id,
       t.revoked_at IS NOT NULL, t.expires_at <= now(), u.disabled_at IS NOT NULL
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.id = %(token_id)s;

-- name: set_password
-- Set a user's password hash (NULL: no password), and end the sessions the old one
-- opened: their tokens are revoked. A row back: the user exists.
WITH changed AS (
    UPDATE users SET password_hash = %(password_hash)s WHERE name = %(name)s
    RETURNING id
), ended AS (
    UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
    WHERE for_session AND user_id IN (SELECT id FROM changed)
)
SELECT id FROM changed;

-- name: user_password
-- A user's id, password hash and whether they are disabled, by name.
SELECT id, password_hash, disabled_at IS NOT NULL FROM users WHERE name = %(name)s;

-- name: token_used
-- Note when a token was used, at most once a minute (a write per request would cost more).
UPDATE api_tokens SET last_used_at = now()
WHERE id = %(id)s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: list_tokens
-- A user's tokens, newest first; never their secrets.
SELECT t.id, t.name, t.created_at, t.last_used_at, t.expires_at, t.revoked_at
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE u.name = %(name)s
ORDER BY t.created_at DESC, t.id;

-- name: revoke_token
-- Revoke a token (revoking twice keeps the first time), when it is the user's own or
-- when the caller may revoke anyone's (user_id NULL).
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = %(id)s AND (%(user_id)s::bigint IS NULL OR user_id = %(user_id)s)
RETURNING id;

-- name: disable_user
-- Disable a user: every token of theirs stops working.
UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE name = %(name)s
RETURNING id;

-- name: list_users
-- Every user by name, or the one whose id is given.
SELECT id, name, role, email, locale, created_at, disabled_at FROM users
WHERE %(user_id)s::bigint IS NULL OR id = %(user_id)s
ORDER BY name;

-- name: user_by_id
-- One user.
SELECT id, name, role, email, locale FROM users WHERE id = %(user_id)s;

-- name: any_admin
-- Whether an admin exists.
SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin');
