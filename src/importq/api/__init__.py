"""The HTTP API (FastAPI): routes, schemas, auth dependency, assembled in ``app.py``."""
