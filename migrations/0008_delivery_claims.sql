-- A delivery is handed over with no transaction open: an attempt claims it for a while
-- (claimed_until), sends, then records the outcome and clears the claim. Another
-- attempt may take it over only once the claim has run out.
ALTER TABLE deliveries ADD COLUMN claimed_until timestamptz;
