-- A dry run goes through the whole pipeline and writes nothing to the target table.
ALTER TABLE batches ADD COLUMN dry_run boolean NOT NULL DEFAULT false;
