"""The HTTP API, on FastAPI: the routes, the schemas and the auth dependency.

``app.py`` assembles them.
"""
