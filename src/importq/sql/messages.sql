-- Notifications and deliveries (email, webhook).

-- name: insert_notification
-- One notification of a type per batch; a second insert is a no-op.
INSERT INTO notifications (user_id, type, batch_id, payload)
VALUES (%(user_id)s, %(type)s, %(batch_id)s, %(payload)s)
ON CONFLICT (type, batch_id) DO NOTHING;

-- name: list_notifications
-- A page of a user's notifications, newest first.
SELECT id, type, batch_id, payload, created_at, read_at, count(*) OVER () AS total
FROM notifications
WHERE user_id = %(user_id)s AND (NOT %(unread)s OR read_at IS NULL)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_notifications
-- How many of a user's notifications match, and how many are unread.
SELECT count(*) FILTER (WHERE NOT %(unread)s OR read_at IS NULL) AS total,
       count(*) FILTER (WHERE read_at IS NULL) AS unread
FROM notifications WHERE user_id = %(user_id)s;

-- name: mark_notification_read
-- Mark one of a user's notifications read (reading twice keeps the first time).
UPDATE notifications SET read_at = coalesce(read_at, now())
WHERE id = %(id)s AND user_id = %(user_id)s
RETURNING id;

-- name: mark_all_notifications_read
-- Mark all of a user's notifications read.
UPDATE notifications SET read_at = now() WHERE user_id = %(user_id)s AND read_at IS NULL;

-- name: insert_delivery
-- A message the batch owes, with its stable id; created once.
INSERT INTO deliveries (batch_id, channel, message_id)
VALUES (%(batch_id)s, %(channel)s, %(message_id)s)
ON CONFLICT DO NOTHING;

-- name: claim_delivery
-- Claim an unsent delivery for lease_seconds, unless another attempt's claim is still
-- running; two claims of one row are serialized by its row lock.
UPDATE deliveries
SET claimed_until = now() + make_interval(secs => %(lease_seconds)s), claimed_by = %(claimant)s
WHERE batch_id = %(batch_id)s AND channel = %(channel)s AND sent_at IS NULL
  AND (claimed_until IS NULL OR claimed_until < now())
RETURNING message_id;

-- name: delivery_state
-- Why a claim failed: the delivery's sent time, and the end of the claim that runs.
SELECT sent_at, claimed_until FROM deliveries
WHERE batch_id = %(batch_id)s AND channel = %(channel)s;

-- name: delivery_claim_running
-- Whether an attempt's claim on the delivery is still running.
SELECT EXISTS (
    SELECT FROM deliveries
    WHERE batch_id = %(batch_id)s AND channel = %(channel)s AND claimed_until >= now()
);

-- name: delivery_sent
-- Record a successful send: never sent again after this, whoever holds a claim.
UPDATE deliveries
SET sent_at = now(), attempts = attempts + 1, last_error = NULL,
    claimed_until = NULL, claimed_by = NULL
WHERE batch_id = %(batch_id)s AND channel = %(channel)s;

-- name: delivery_failed
-- Record a failed attempt, and give up its claim (not one another attempt took since).
UPDATE deliveries
SET attempts = attempts + 1, last_error = %(error)s,
    claimed_until = CASE WHEN claimed_by = %(claimant)s THEN NULL ELSE claimed_until END,
    claimed_by = CASE WHEN claimed_by = %(claimant)s THEN NULL ELSE claimed_by END
WHERE batch_id = %(batch_id)s AND channel = %(channel)s;

-- name: record_delivery_attempt
-- Log one attempt (its number is the deliveries row's attempts after counting it).
INSERT INTO delivery_attempts (batch_id, channel, attempt, status_code, error)
SELECT batch_id, channel, attempts, %(status_code)s, %(error)s
FROM deliveries WHERE batch_id = %(batch_id)s AND channel = %(channel)s;

-- name: clear_delivery_error_on_batch
-- The message went out after all: drop the batch's note that it had failed.
UPDATE batches SET last_error = NULL, updated_at = now()
WHERE id = %(batch_id)s AND starts_with(last_error, %(prefix)s);
