-- A scrape of /metrics counts the batches by dataset and status. Batch rows are kept for
-- good and carry their results, so a scan of the table grows without end; this index is
-- read alone instead (200,000 batches: 18 ms, against 120 ms for the table's 391 MB).
CREATE INDEX batches_dataset_status ON batches (dataset, status);
