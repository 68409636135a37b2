-- A user may sign in to the web pages with a name and a password (importq users password
-- NAME). Only a scrypt hash is kept: "scrypt$<n>$<r>$<p>$<salt>$<hash>", base64 parts.
ALTER TABLE users ADD COLUMN password_hash text;
-- A token issued by a password sign-in, for that web session alone: a new password (or
-- none) revokes every such token of the user, so no session outlives its password.
ALTER TABLE api_tokens ADD COLUMN for_session boolean NOT NULL DEFAULT false;
