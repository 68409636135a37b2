"""The web pages people use: server-rendered, on the API's port, over the same API."""
