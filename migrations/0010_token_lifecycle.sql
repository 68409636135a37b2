-- Tokens get an id to name them by (never guessable: the token itself is shown once), an
-- optional name, when they were last used, an optional expiry, and can be revoked; a
-- user can be disabled, which stops all their tokens.
ALTER TABLE api_tokens
    ADD COLUMN id           uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    ADD COLUMN name         text,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN revoked_at   timestamptz;
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
