"""importq: bulk import of tabular files into PostgreSQL as chunked, resumable batches."""

__version__ = "0.1.0"
