-- importq's own tables. Target tables of datasets are created by `importq migrate`
-- from the dataset definitions, not here.

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    role        text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'moderator', 'admin')),
    email       text,
    -- NULL: no preference; emails then follow the import request's Accept-Language.
    locale      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Tokens are stored as SHA-256 digests; the plain token is shown once.
CREATE TABLE api_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE batches (
    id               uuid PRIMARY KEY,
    dataset          text NOT NULL,
    format           text NOT NULL CHECK (format IN ('csv', 'xlsx', 'json')),
    file_name        text,
    initiator_id     bigint NOT NULL REFERENCES users (id),
    locale           text NOT NULL DEFAULT 'en',
    callback_url     text,
    status           text NOT NULL CHECK (status IN
                         ('pending', 'active', 'aggregating', 'completed', 'failed', 'cancelled')),
    -- The header as uploaded; staged row values are aligned with it.
    header           text[] NOT NULL,
    total_rows       integer NOT NULL CHECK (total_rows > 0),
    total_chunks     integer NOT NULL CHECK (total_chunks > 0),
    completed_chunks integer NOT NULL DEFAULT 0,
    failed_chunks    integer NOT NULL DEFAULT 0,
    processed_rows   integer NOT NULL DEFAULT 0,
    successes        integer NOT NULL DEFAULT 0,
    duplicates       integer NOT NULL DEFAULT 0,
    failures         integer NOT NULL DEFAULT 0,
    result           jsonb,
    -- Storage paths of the written reports, by kind; links are signed from these.
    report_paths     jsonb,
    reports_expire_at timestamptz,
    warnings         jsonb NOT NULL DEFAULT '[]',
    last_error       text,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    CHECK (completed_chunks + failed_chunks <= total_chunks),
    CHECK (successes + duplicates + failures = processed_rows),
    UNIQUE (initiator_id, idempotency_key)
);
CREATE INDEX batches_initiator_created ON batches (initiator_id, created_at DESC);
CREATE INDEX batches_created ON batches (created_at DESC);

-- A chunk holds the staged rows whose key hash lies in [hash_from, hash_to);
-- hash_to is NULL for the last chunk (no upper bound).
CREATE TABLE chunks (
    batch_id   uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    chunk_no   integer NOT NULL,
    hash_from  bigint NOT NULL,
    hash_to    bigint,
    row_count  integer NOT NULL,
    status     text NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'done', 'failed')),
    attempts   integer NOT NULL DEFAULT 0,
    error      text,
    PRIMARY KEY (batch_id, chunk_no)
);

-- Rows exactly as uploaded: `values` is a JSON array of strings (or null) aligned with
-- batches.header (json, not text[]: it is encoded and decoded in C on both sides, which
-- keeps staging close to COPY speed). `problem` is set when the row could not be read
-- as a record (ragged, nested JSON value…): it becomes a failure.
CREATE TABLE staged_rows (
    batch_id  uuid NOT NULL,
    line      integer NOT NULL,
    key_hash  bigint NOT NULL,
    problem   text,
    "values"  json NOT NULL
);
CREATE INDEX staged_rows_batch_hash ON staged_rows (batch_id, key_hash);

-- Exactly one outcome per staged row: the primary key makes a second one impossible.
-- `record` is the row as its report prints it (a CSV record, CRLF included), formatted
-- by the chunk job, so the aggregation only orders and concatenates.
-- No foreign key to batches: a per-row check would cost as much as the row itself;
-- rows are written only by the chunk transaction of an existing batch.
CREATE TABLE row_results (
    batch_id   uuid NOT NULL,
    line       integer NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('success', 'duplicate', 'failure')),
    message    text,
    target_id  text,
    record     text NOT NULL,
    PRIMARY KEY (batch_id, line)
);

CREATE TABLE notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type        text NOT NULL,
    batch_id    uuid REFERENCES batches (id) ON DELETE CASCADE,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    read_at     timestamptz,
    UNIQUE (type, batch_id)
);
CREATE INDEX notifications_user_created ON notifications (user_id, created_at DESC);

-- One row per message a batch owes (email, webhook); `sent_at` set means never again.
CREATE TABLE deliveries (
    batch_id     uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    channel      text NOT NULL CHECK (channel IN ('email', 'webhook')),
    message_id   text NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    sent_at      timestamptz,
    last_error   text,
    PRIMARY KEY (batch_id, channel)
);
