-- Where a batch came from, for the jobs deferred on its behalf outside its own jobs (a
-- cancel's, reconcile's): the id of the request that started it, and the W3C
-- traceparent of its staging span when tracing was on. NULL for earlier batches.
ALTER TABLE batches ADD COLUMN request_id text, ADD COLUMN trace text;
