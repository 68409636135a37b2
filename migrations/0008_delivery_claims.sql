-- A delivery is handed over with no transaction open: an attempt claims it for a while
-- (claimed_until, by claimed_by: its job), sends, then records the outcome and clears
-- the claim. Another job may take it over only once the claim has run out; the same
-- job, retried after its worker died, takes it back at once.
ALTER TABLE deliveries ADD COLUMN claimed_until timestamptz, ADD COLUMN claimed_by text;
