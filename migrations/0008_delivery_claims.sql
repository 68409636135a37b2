-- A delivery is handed over with no transaction open: an attempt claims it for a while
-- (claimed_until, by claimed_by: the attempt), sends, then records the outcome and gives
-- the claim up. Another attempt may take it over only once the claim has run out.
ALTER TABLE deliveries ADD COLUMN claimed_until timestamptz, ADD COLUMN claimed_by text;
