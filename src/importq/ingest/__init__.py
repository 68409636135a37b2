"""Ingest: reading an upload (CSV, XLSX, JSON) and staging its rows as a batch."""
