-- A user may sign in to the web pages with a name and a password (importq users password
-- NAME). Only a scrypt hash is kept: "scrypt$<n>$<r>$<p>$<salt>$<hash>", base64 parts.
ALTER TABLE users ADD COLUMN password_hash text;
