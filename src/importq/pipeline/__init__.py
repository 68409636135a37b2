"""Pipeline: the queue, a batch's chunks, their completion, reports and recovery."""
