"""The queue worker: importq's tasks on procrastinate."""
