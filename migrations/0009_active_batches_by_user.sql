-- The rows a user has waiting (IMPORTQ_MAX_PENDING_ROWS_PER_USER) are summed over their
-- active batches, which this finds without reading their finished ones.
CREATE INDEX batches_active_initiator ON batches (initiator_id) WHERE status = 'active';
