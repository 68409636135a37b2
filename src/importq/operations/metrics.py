"""What importq tells Prometheus: every series it exports is defined here, named
``importq_…``.

There are two kinds, read two ways:

- **Events**, counted by the process where they happen, as prometheus_client counters
  and histograms: rows by the outcome the batch's reports give them, once each, when
  the transaction that settled them has committed (:class:`SettledRows`: a chunk's, a
  cancel's, or a checked batch's at its end); a chunk's duration, an upload's staging
  time and bytes once its batch has committed, deliveries, reconcile's recoveries, and
  HTTP requests by route. Each costs a few increments, once a chunk, a cancel, a batch,
  an upload, a message or a request, never once a row. A scrape sees the events
  of the process that answers it. With ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
  own variable: a folder, empty when the service starts, that the processes of one host
  share) it sees those of every process sharing the folder.
- **State**, read when a scrape asks: batches by dataset and status, the queue's jobs and
  the age of its job due longest, from the database in one query (``metrics_state``),
  and the answering process's connection pools. Read from the source, the database's
  figures are the same whichever process answers, and never drift from it. The query
  runs once at a time per process, on the main pool, and its answer serves the scrapes
  of the next ``STATE_SECONDS`` (:class:`StateReader`): however many scrape, anonymous
  or not, they cost the database one query every 2 s and never hold a connection that
  authentication needs.

:func:`exposition` renders both. ``GET /metrics`` (:mod:`importq.api.metrics`) answers
with all of it; ``importq worker --metrics-port`` (:func:`serve_metrics`) with the
worker's events and pool, as it has no API port.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, ParamSpec
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from psycopg_pool import PoolTimeout

from importq.db import DatabaseOutage, Pool
from importq.pipeline.batches import ChunkTally
from importq.pipeline.job_queue import (
    CHUNKS,
    CHUNKS_EXPRESS,
    COMPLETION,
    MAINTENANCE,
    MESSAGES,
    WEBHOOKS,
)
from importq.sql import queries

log = logging.getLogger(__name__)

# Each counter's ``_created`` twin would double the series for nothing a dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: prometheus_client's variable: set, the processes sharing its folder are counted together.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# A scrape's question to the database gives up after this long, as /health's do.
STATE_TIMEOUT = 5.0
# How long the database's answer serves the scrapes after it.
STATE_SECONDS = 2.0
# The queues whose gauges are always there, at 0 when empty (a job on another is shown too).
QUEUES = (CHUNKS, CHUNKS_EXPRESS, COMPLETION, MESSAGES, WEBHOOKS, MAINTENANCE)
# The route of a request that matched none, or whose route refused its method, so that
# unknown paths and methods make one series.
UNMATCHED = "unmatched"
# The methods a request's series names; any other is "other", whatever a client sends.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"

# A chunk takes milliseconds to a few seconds (20,000 rows: ~0.5 s of a core); an upload
# up to minutes (8 GiB); a request up to an upload's length.
_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STAGING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

ROWS = Counter(
    "importq_rows",
    "Rows by the outcome the batch's reports give them, each counted once, by run "
    "(import, or dry_run: what would have happened), once the transaction that settled "
    "them has committed: a chunk's (onError continue); a cancel's, its rows as failures; "
    "a checked batch's (onError atomic or abort-above) all at once when it finishes, as "
    "written, or as failures when held",
    ["dataset", "run", "outcome"],
)
CHUNK_SECONDS = Histogram(
    "importq_chunk_duration_seconds",
    "Time a chunk took, from its claim to its commit",
    ["dataset"],
    buckets=_CHUNK_BUCKETS,
)
STAGING_SECONDS = Histogram(
    "importq_staging_duration_seconds",
    "Time an upload took to stage (read, COPY, chunks cut, batch created), to its commit",
    ["dataset", "format"],
    buckets=_STAGING_BUCKETS,
)
STAGING_BYTES = Counter(
    "importq_staging_bytes",
    "Bytes of the uploads staged as new batches",
    ["dataset", "format"],
)
DELIVERIES = Counter(
    "importq_deliveries",
    "What finished batches were owed: emails and webhooks sent, failed (to be retried) or "
    "given up; notifications created",
    ["channel", "outcome"],
)
RECOVERIES = Counter(
    "importq_reconcile_recoveries",
    "What reconcile set going again: a dead worker's job, a chunk given up after its "
    "last lost attempt, a missed completion check, aggregation or chunk job",
    ["kind"],
)
HTTP_SECONDS = Histogram(
    "importq_http_request_duration_seconds",
    "Time a request took to answer, to the end of its body (not the background tasks "
    "after it), by route template",
    ["route", "method", "status"],
    buckets=_HTTP_BUCKETS,
)

_Counting = ParamSpec("_Counting")
# How many counting calls have failed in this process: the first is logged as a warning.
_failures = itertools.count()


def _never_raises(count: Callable[_Counting, None]) -> Callable[_Counting, None]:
    """``count``, unable to raise into the work it counts: a metric that cannot be
    written (``PROMETHEUS_MULTIPROC_DIR`` gone, read-only or full) loses the event, and
    the work it counts goes on as if it had been counted. The process's first such
    failure is logged as a warning, later ones at debug."""

    @functools.wraps(count)
    def guarded(*args: _Counting.args, **kwargs: _Counting.kwargs) -> None:
        try:
            count(*args, **kwargs)
        except Exception as error:
            first = next(_failures) == 0
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "metrics: %s failed, the event is not counted: %r%s",
                count.__name__,
                error,
                " (later failures are logged at debug)" if first else "",
            )

    return guarded


def multiprocess_dir_problem() -> str | None:
    """Why ``PROMETHEUS_MULTIPROC_DIR``, when set, cannot take this process's metrics (it
    is not a folder, or this user cannot create a file in it); None when it can, or is
    unset. ``serve`` and ``worker`` refuse to start with it, and ``importq doctor`` says it."""
    folder = os.environ.get(MULTIPROCESS_DIR)
    if not folder:
        return None
    if not os.path.isdir(folder):
        return f"{MULTIPROCESS_DIR}={folder} is not a folder"
    try:
        # A real file, as prometheus_client will write: a read-only mount passes os.access.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".importq-check-"):
            pass
    except OSError as error:
        return f"{MULTIPROCESS_DIR}={folder} is not writable: {error.strerror or error}"
    return None


# A chunk tally's counters, by the outcome its rows' results carry.
_OUTCOMES = {
    "inserted": "inserted",
    "updated": "updated",
    "unchanged": "unchanged",
    "deleted": "deleted",
    "restored": "restored",
    "duplicates": "duplicate",
    "failures": "failure",
}


@dataclass(frozen=True)
class SettledRows:
    """Rows a transaction gave their final outcome, to count once it has committed."""

    dataset: str
    dry_run: bool
    tally: ChunkTally


@_never_raises
def count_rows(settled: SettledRows | None) -> None:
    """Count rows that got their final outcome (None: none did). Each outcome is counted,
    zeros included, so that a series exists from the dataset's first rows on."""
    if settled is None:
        return
    run = "dry_run" if settled.dry_run else "import"
    for counter, outcome in _OUTCOMES.items():
        ROWS.labels(settled.dataset, run, outcome).inc(getattr(settled.tally, counter))


@_never_raises
def count_chunk(dataset: str, seconds: float) -> None:
    """A chunk that did its work has committed: how long it took."""
    CHUNK_SECONDS.labels(dataset).observe(seconds)


@_never_raises
def count_staging(dataset: str, fmt: str, upload: IO[bytes], seconds: float) -> None:
    """A new batch has committed: how long its upload took to stage, and its bytes."""
    STAGING_SECONDS.labels(dataset, fmt).observe(seconds)
    try:
        size = os.fstat(upload.fileno()).st_size
    except (OSError, ValueError):  # not a file (the spool always is)
        return
    STAGING_BYTES.labels(dataset, fmt).inc(size)


@_never_raises
def count_delivery(channel: str, outcome: str) -> None:
    DELIVERIES.labels(channel, outcome).inc()


@_never_raises
def count_recoveries(kind: str, found: int = 1) -> None:
    RECOVERIES.labels(kind).inc(found)


@_never_raises
def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_SECONDS.labels(route, method, str(status)).observe(seconds)


#: A row of ``metrics_state``: the series, its labels' values, the value.
StateRow = tuple[str, str, str | None, float]


async def read_state(pool: Pool, outage: DatabaseOutage) -> list[StateRow] | None:
    """The database's part of a scrape, or None when it does not answer within
    ``STATE_TIMEOUT`` (or is known to be away): then ``importq_database_up`` is 0."""
    if outage.ongoing:
        return None
    try:
        async with asyncio.timeout(STATE_TIMEOUT), pool.connection(timeout=STATE_TIMEOUT) as conn:
            cursor = await conn.execute(queries["metrics_state"], {"queues": list(QUEUES)})
            return [(str(s), str(a), b, float(v)) for s, a, b, v in await cursor.fetchall()]
    except (psycopg.Error, PoolTimeout, TimeoutError) as error:
        log.info("metrics: the database's state was not read: %s", error)
        return None


class StateReader:
    """The database's part of the scrapes of one process: one :func:`read_state` at a
    time, shared by the scrapes that come while it runs, and its answer (even None) kept
    for ``STATE_SECONDS`` after it ends for those that follow. A scrape that gives up
    does not cancel the read the others wait on."""

    def __init__(self) -> None:
        self._read: asyncio.Task[list[StateRow] | None] | None = None
        self._ended = 0.0

    async def read(self, pool: Pool, outage: DatabaseOutage) -> list[StateRow] | None:
        read = self._read
        if read is None or (read.done() and time.monotonic() - self._ended >= STATE_SECONDS):
            # The read is no request's: its log line names none.
            read = self._read = asyncio.create_task(
                read_state(pool, outage), context=contextvars.Context()
            )
            read.add_done_callback(self._note_end)
        return await asyncio.shield(read)

    def _note_end(self, _: asyncio.Task[list[StateRow] | None]) -> None:
        self._ended = time.monotonic()


class DatabaseState(Collector):
    """The database's part of a scrape: what :func:`read_state` read, or None."""

    def __init__(self, rows: list[StateRow] | None) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        up = self._rows is not None
        yield GaugeMetricFamily(
            "importq_database_up",
            "Whether the database answered this scrape's question (1) or not (0)",
            value=1 if up else 0,
        )
        if self._rows is None:
            return
        batches = GaugeMetricFamily(
            "importq_batches", "Batches by dataset and status", labels=["dataset", "status"]
        )
        jobs = GaugeMetricFamily(
            "importq_queue_jobs",
            "Jobs waiting (todo) and running (doing) by queue",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "importq_queue_oldest_job_age_seconds",
            "How long the queue's job due longest has been due: since its scheduled_at (a "
            "retry's or a schedule's), or, for the unscheduled job of lowest id, since its "
            "deferral (its 'deferred' event); the older of the two; 0 when no job is due. "
            "Read at most every 2 s",
            labels=["queue"],
        )
        for series, first, second, value in self._rows:
            if series == "batches":
                batches.add_metric([first, second or ""], value)
            elif series == "queue_jobs":
                jobs.add_metric([first, second or ""], value)
            elif series == "oldest_job_age":
                oldest.add_metric([first], value)
        yield from (batches, jobs, oldest)


@dataclass(frozen=True)
class PoolFigures:
    """A pool's connections as psycopg_pool counted them at one moment."""

    size: int
    available: int
    max: int
    waiting: int


def pool_figures(pools: Mapping[str, Pool]) -> dict[str, PoolFigures]:
    """The ``pools``' figures now. On their event loop only: psycopg_pool's counters are
    the loop's, not for another thread to read (:class:`PoolSnapshots`)."""
    figures = {}
    for name, pool in pools.items():
        stats = pool.get_stats()
        figures[name] = PoolFigures(
            size=stats.get("pool_size", 0),
            available=stats.get("pool_available", 0),
            max=pool.max_size,
            waiting=stats.get("requests_waiting", 0),
        )
    return figures


#: How often a worker's event loop publishes its pool's figures for its metrics thread.
POOL_SNAPSHOT_SECONDS = 2.0


class PoolSnapshots:
    """The ``pools``' figures as their event loop last published them (:meth:`publish`),
    for a thread of its own to read: a worker's metrics server, which never waits on a
    busy loop. The figures are a new dict each time, swapped whole."""

    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self._pools = pools
        self.figures = pool_figures(pools)

    async def publish(self, every: float = POOL_SNAPSHOT_SECONDS) -> None:
        """Publish the figures every ``every`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(every)
            self.figures = pool_figures(self._pools)


class _PoolState(Collector):
    """The answering process's pools, as :func:`pool_figures` read them."""

    def __init__(self, figures: Mapping[str, PoolFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "importq_db_pool_connections",
            "The process's pooled connections: open (size), idle in the pool (available), "
            "and the most it may open (max)",
            labels=["pool", "state"],
        )
        waiting = GaugeMetricFamily(
            "importq_db_pool_requests_waiting",
            "Requests of the process waiting for one of the pool's connections",
            labels=["pool"],
        )
        for name, figures in self._figures.items():
            connections.add_metric([name, "size"], figures.size)
            connections.add_metric([name, "available"], figures.available)
            connections.add_metric([name, "max"], figures.max)
            waiting.add_metric([name], figures.waiting)
        yield from (connections, waiting)


class _Scrape(Collector):
    def __init__(self, *sources: Collector) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source.collect()


def _events() -> Collector:
    """This process's events, or with ``PROMETHEUS_MULTIPROC_DIR`` every process's that
    shares the folder (each writes its own files there)."""
    if os.environ.get(MULTIPROCESS_DIR):
        return MultiProcessCollector(None)  # type: ignore[no-untyped-call]
    return REGISTRY


def exposition(pools: Mapping[str, PoolFigures], *more: Collector) -> bytes:
    """The metrics in Prometheus's text format: the events, the pools' figures, and
    ``more`` (the API adds the :class:`DatabaseState`). Safe in any thread."""
    return generate_latest(_Scrape(_events(), _PoolState(pools), *more))


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in
    constant time. The header is as ASGI and WSGI servers give it, its bytes decoded as
    Latin-1, so it is compared as those bytes, with the token's UTF-8 (as a client
    sends it): a token beyond ASCII matches too."""
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    try:
        sent = presented.strip().encode("latin-1")
    except UnicodeEncodeError:  # not a header's bytes
        return False
    return hmac.compare_digest(sent, token.encode())


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def serve_metrics(
    host: str, port: int, token: str | None, render: Callable[[], bytes]
) -> WSGIServer:
    """Answer ``GET /metrics`` on ``host:port`` with ``render()``, in a thread of its own
    (so that a busy event loop never delays a scrape), behind ``Bearer <token>`` when a
    token is given. Stop it with ``shutdown()`` then ``server_close()``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found: the metrics are at /metrics.\n"]
        if token is not None and not token_matches(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"Send the metrics token as 'Authorization: Bearer <token>'.\n"]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [render()]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
